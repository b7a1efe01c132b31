"""Vendor text made inert in the markups receivers render. Pure: no I/O.

Whatever the vendor sends is shown as the vendor wrote it: a driver called
`<!channel>` pings no Slack channel, and a name such as `<http://evil|click>`
cannot become a disguised link. The only links in a message are the bridge's own,
to URLs `web_url` accepted.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

from bridge.display import UNSAFE_CHARS

URL_MAX: Final = 2000  # longer links are left out rather than cut (a cut URL is broken)

_SPACE = re.compile(r"\s")


def escape_mrkdwn(text: str) -> str:
    """Escape Slack's control characters so `text` shows literally in mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def web_url(url: Any) -> str | None:
    """`url` if it is a plain http(s) URL fit for a link, else None.

    Plain: at most `URL_MAX` characters, no whitespace or control characters (which
    could end a link early or hide part of it), and a host.
    """
    if not isinstance(url, str) or not 0 < len(url) <= URL_MAX:
        return None
    if _SPACE.search(url) or UNSAFE_CHARS.search(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url
