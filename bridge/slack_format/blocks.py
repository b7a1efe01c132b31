"""Block Kit primitives: blocks cut to Slack's limits, mrkdwn values, links. Pure.

Limits: https://api.slack.com/reference/block-kit/blocks — header text ≤ 150,
section text ≤ 3000, ≤ 10 fields of ≤ 2000, ≤ 10 context elements, ≤ 50 blocks; the
fallback `text` is kept ≤ 3000. Too long text is cut with "…", never mid-link or
mid-entity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import tzinfo
from typing import Any, Final, TypedDict

from bridge.display import ELLIPSIS, VALUE_MAX, clean, coordinates, cut, fit, local_time, units
from bridge.markup import escape_mrkdwn, web_url

HEADER_MAX: Final = 150
SECTION_TEXT_MAX: Final = 3000
FIELD_MAX: Final = 2000
FIELDS_MAX: Final = 10
CONTEXT_ELEMENTS_MAX: Final = 10
BLOCKS_MAX: Final = 50
TEXT_MAX: Final = 3000
LIST_BLOCKS_MAX: Final = 8  # sections one list (videos, trend days) may take
NOTHING: Final = "—"


class SlackMessage(TypedDict):
    """The part of a Slack message the bridge builds (webhook body / chat.postMessage)."""

    text: str
    blocks: list[dict[str, Any]]


# --------------------------------------------------------------------------- mrkdwn text


def fit_mrkdwn(text: str, limit: int) -> str:
    """Like `fit`, but never cuts inside a `<link|label>` or an `&amp;` entity."""
    if units(text) <= limit:
        return text
    prefix = cut(text, limit - 1)
    if prefix.rfind("<") > prefix.rfind(">"):
        prefix = prefix[: prefix.rfind("<")]
    amp = prefix.rfind("&")
    if amp != -1 and ";" not in prefix[amp:]:
        prefix = prefix[:amp]
    return prefix + ELLIPSIS


def m(value: Any, limit: int = VALUE_MAX) -> str | None:
    """A vendor value cleaned and escaped for mrkdwn; None if empty."""
    text = clean(value, limit)
    return escape_mrkdwn(text) if text is not None else None


def time_m(value: Any, tz: tzinfo) -> str | None:
    """A time for mrkdwn: local when readable, else the vendor's text escaped."""
    return local_time(value, tz) or m(value)


def map_link(location: Any) -> str | None:
    """`<https://www.google.com/maps?q=LAT,LNG|LAT, LNG>`, or None without coordinates."""
    coords = coordinates(location)
    if coords is None:
        return None
    lat, lng = coords
    return f"<https://www.google.com/maps?q={lat},{lng}|{lat}, {lng}>"


def link(url: Any, label: str) -> str | None:
    """A mrkdwn link to a vendor URL, or None unless it is a plain http(s) URL.

    `label` is plain text (escaped here). In the URL, `&` becomes `&amp;` as Slack
    asks, and `|`, `<`, `>` are percent-encoded so they cannot end the link early.
    """
    url = web_url(url)
    if url is None:
        return None
    safe = url.replace("&", "&amp;").replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")
    return f"<{safe}|{escape_mrkdwn(label)}>"


# --------------------------------------------------------------------------- blocks


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}


def _mrkdwn(text: str, limit: int) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": fit_mrkdwn(text, limit) or NOTHING}


def header(marker: str, title: str, suffix: str = "") -> dict[str, Any]:
    """A header block: `marker title suffix`; the title is cut first, never emptied."""
    title = clean(title, HEADER_MAX) or "fleet-bridge notification"
    room = HEADER_MAX - units(f"{marker} ") - units(suffix)
    text = f"{marker} {fit(title, max(room, 8))}{suffix}" if marker else title + suffix
    return {"type": "header", "text": _plain(fit(text, HEADER_MAX))}


def section(text: str | None = None, fields: Iterable[str] = ()) -> dict[str, Any]:
    """A section block with mrkdwn text and/or (at most 10) fields."""
    block: dict[str, Any] = {"type": "section"}
    if text:
        block["text"] = _mrkdwn(text, SECTION_TEXT_MAX)
    items = [_mrkdwn(f, FIELD_MAX) for f in list(fields)[:FIELDS_MAX]]
    if items:
        block["fields"] = items
    if len(block) == 1:
        block["text"] = _mrkdwn(NOTHING, SECTION_TEXT_MAX)
    return block


def context(parts: Iterable[str]) -> dict[str, Any]:
    """A context block of mrkdwn elements (at most 10)."""
    elements = [_mrkdwn(p, FIELD_MAX) for p in list(parts)[:CONTEXT_ELEMENTS_MAX] if p]
    return {"type": "context", "elements": elements or [_mrkdwn(NOTHING, FIELD_MAX)]}


def field(label: str, value: str | None) -> str:
    """A section field: the label in bold over the value (or a dash)."""
    return f"*{label}*\n{value or NOTHING}"


def list_sections(
    title: str, lines: Sequence[str], max_blocks: int = LIST_BLOCKS_MAX, more: int = 0
) -> list[dict[str, Any]]:
    """`lines` packed into as few sections as fit; what does not fit is counted, not cut.

    `more` counts lines that exist but were never given (they join the "…and N more").
    """
    blocks: list[dict[str, Any]] = []
    current = f"*{title}*"
    shown = 0
    for line in lines:
        line = fit_mrkdwn(line, SECTION_TEXT_MAX - 100)
        if units(current) + 1 + units(line) <= SECTION_TEXT_MAX - 40:
            current += "\n" + line
            shown += 1
            continue
        if len(blocks) + 1 >= max_blocks:
            break
        blocks.append(section(current))
        current = line
        shown += 1
    hidden = len(lines) - shown + max(more, 0)
    if hidden > 0:
        current += f"\n…and {hidden:,} more"
    blocks.append(section(current))
    return blocks


def finish(blocks: list[dict[str, Any]], text: str) -> SlackMessage:
    """The message: at most `BLOCKS_MAX` blocks, the fallback `text` cut to its limit."""
    if len(blocks) > BLOCKS_MAX:
        blocks = [*blocks[: BLOCKS_MAX - 1], context(["…more details left out"])]
    return {"text": fit_mrkdwn(text, TEXT_MAX) or NOTHING, "blocks": blocks}


def context_parts(envelope: Mapping[str, Any], type_: str, *extra: str | None) -> list[str]:
    """The closing context line: `extra` facts, then the notification type and id."""
    parts = [p for p in extra if p]
    parts.append(escape_mrkdwn(clean(type_, 64) or "notification"))
    notification_id = m(envelope.get("id"), 64)
    if notification_id:
        parts.append(notification_id)
    return parts
