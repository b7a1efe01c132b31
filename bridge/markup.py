"""Vendor text made inert in the markups receivers render. Pure: no I/O.

Whatever the vendor sends is shown as the vendor wrote it: a driver called
`<!channel>` pings no Slack channel, `@everyone` no Discord server, and a name such
as `[click](http://evil)` or `<http://evil|click>` cannot become a disguised link,
bold text, a heading or a quote. The only links in a message are the bridge's own,
to URLs `web_url` accepted.

- Slack mrkdwn has three control characters, replaced by entities (`escape_mrkdwn`).
- Markdown (CommonMark and the dialects built on it: Teams' Adaptive Cards, Discord)
  is escaped with backslashes, which its renderers drop before any ASCII
  punctuation. `escape_markdown` covers what Adaptive Card TextBlocks and facts
  render (https://learn.microsoft.com/adaptive-cards/authoring-cards/text-features:
  bold, italic, lists, links, plus the `{{DATE()}}` / `{{TIME()}}` functions) and
  CommonMark's entities; `escape_discord` covers Discord's dialect (underline,
  strikethrough, spoilers, headings, subtext, quotes, masked links, `<@…>`-style
  mentions) and breaks `@everyone` / `@here` with a zero-width space, as Discord's
  own libraries do. Escaping only what can form markup leaves ids, UUIDs, times
  and most names as they are.

Two limits remain. A bare URL in vendor text is still made clickable by Discord
and Teams (no escape stops that), but it shows as itself and cannot hide behind
other words. Teams' mobile clients have shown the backslash of some escapes
(microsoft/AdaptiveCards#7474): a stray backslash there is the price of never
rendering a vendor's link.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

from bridge.display import ELLIPSIS, UNSAFE_CHARS

URL_MAX: Final = 2000  # longer links are left out rather than cut (a cut URL is broken)

_SPACE = re.compile(r"\s")

# Inline markup, anywhere in a line: emphasis (`*`, `_`), code, strikethrough, link
# text; and the backslash itself, so that a vendor's `\` cannot escape what follows.
_MARKDOWN_INLINE: Final = re.compile(r"[\\`*_~\[\]]")
# Discord adds spoilers (`||`) and `<…>`: mentions, channels, roles, custom emoji and
# timestamps (`<@123>`, `<@&1>`, `<#2>`, `<:e:3>`, `<t:1700000000>`).
_DISCORD_INLINE: Final = re.compile(r"[\\`*_~|\[\]<]")
# Markers that count only where a line starts (after blanks): headings (and Discord's
# `-#` subtext), quotes, list items (`-`, `+`, `1.`, `1)`), setext underlines. A
# lone CR starts a line too: Adaptive Cards break lines on `\r`.
_LINE_MARKER: Final = re.compile(
    r"(?<![^\r\n\u2028\u2029])([ \t]*(?:\d{1,9}(?=[.)]))?)([-+=>#]|(?<=\d)[.)])"
)
_ENTITY: Final = re.compile(r"&(?=#?[0-9A-Za-z]+;)")  # `&amp;` would show as `&`
_CARD_FUNCTION: Final = re.compile(r"\{\{(?=(?:DATE|TIME)\()")
_BROADCAST: Final = re.compile(r"@(?=everyone|here)", re.IGNORECASE)
_ZERO_WIDTH_SPACE: Final = "\u200b"
# What could end a markdown link's destination early or escape its `)`.
_LINK_DESTINATION: Final = {"\\": "%5C", "(": "%28", ")": "%29", "<": "%3C", ">": "%3E"}


def escape_mrkdwn(text: str) -> str:
    """Escape Slack's control characters so `text` shows literally in mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_markdown(text: str) -> str:
    """`text` as markdown that renders literally (Adaptive Cards in Teams, CommonMark)."""
    text = _MARKDOWN_INLINE.sub(r"\\\g<0>", text)
    text = _LINE_MARKER.sub(r"\1\\\2", text)
    text = _ENTITY.sub(r"\\&", text)
    return _CARD_FUNCTION.sub("{" + _ZERO_WIDTH_SPACE + "{", text)


def escape_discord(text: str) -> str:
    """`text` as Discord markdown that renders literally and mentions no one."""
    text = _DISCORD_INLINE.sub(r"\\\g<0>", text)
    text = _LINE_MARKER.sub(r"\1\\\2", text)
    return _BROADCAST.sub("@" + _ZERO_WIDTH_SPACE, text)


def fit_escaped(text: str, limit: int) -> str:
    """Escaped `text`, or its prefix plus "…" in at most `limit` characters.

    The cut never separates a backslash from the character it escapes: a backslash
    left before the "…" would show, or escape something else.
    """
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)].rstrip("\\") + ELLIPSIS


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


def discord_link(url: Any, label: str) -> str | None:
    """`[label](url)` in Discord markdown, or None unless `url` is a plain http(s) URL.

    The label is escaped; in the URL, `(`, `)`, `<`, `>` and `\\` are percent-encoded
    so they cannot end the link early or make it point elsewhere.
    """
    safe = web_url(url)
    if safe is None:
        return None
    for char, code in _LINK_DESTINATION.items():
        safe = safe.replace(char, code)
    return f"[{escape_discord(label)}]({safe})"
