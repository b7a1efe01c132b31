"""`event.group` (storm control's grouped or held events) as one Slack message. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import tzinfo
from typing import Any, Final

from bridge.display import as_int, as_list, clean, dig, plural, units
from bridge.markup import escape_mrkdwn
from bridge.slack_format.blocks import (
    FIELDS_MAX,
    TEXT_MAX,
    SlackMessage,
    context,
    context_parts,
    finish,
    header,
    list_sections,
    m,
    section,
    time_m,
)
from bridge.slack_format.events import (
    SEVERITY_MARKERS,
    SEVERITY_WORDS,
    driver,
    severity,
    severity_counts,
)

_GROUP_ITEMS_MAX: Final = 200  # members looked at; a hostile list is not walked to its end
_GROUP_TEXT_ROOM: Final = TEXT_MAX - 200  # fallback members stop here, "and N more" follows
_REASONS: Final = {
    "muted": "Held during quiet hours: these arrived while the target was muted.",
    "grouped": "Grouped: several events for the same key in a short time.",
}


def _key_words(key: Any) -> tuple[str, str]:
    """A group key as plain text and as mrkdwn: `{"vehicle.id": 123}` → "vehicle 123"."""
    plain: list[str] = []
    marked: list[str] = []
    for path, value in list(key.items())[:FIELDS_MAX] if isinstance(key, Mapping) else ():
        name = clean(path, 64) or "key"
        name = name.removesuffix(".id").replace(".", " ").replace("_", " ")
        shown = clean(value, 100) or ("none" if value is None else "unknown")
        plain.append(f"{name} {shown}")
        marked.append(f"{escape_mrkdwn(name)} {escape_mrkdwn(shown)}")
    return ", ".join(plain) or "all events", ", ".join(marked) or "all events"


def _worst(counts: Mapping[str, int]) -> str:
    return next((s for s in SEVERITY_MARKERS if counts.get(s, 0) > 0), "unknown")


def _member_data(item: Any) -> Mapping[str, Any]:
    data = dig(item, "data")
    return data if isinstance(data, Mapping) else {}


def _member(item: Any, tz: tzinfo) -> tuple[str, str]:
    """One member of a group as a mrkdwn line and as a fallback fact."""
    data = _member_data(item)
    level = severity(data)
    word = SEVERITY_WORDS.get(level, "Unknown severity")
    name = m(dig(data, "event_type", "name")) or "Unknown event"
    if dig(item, "type") == "event.updated":
        name += " (update)"
    when = time_m(data.get("occurred_at"), tz) or "time unknown"
    driver_m = driver(data) or "unknown"
    line = f"{SEVERITY_MARKERS[level]} {when} · *{name}* · {word} · driver {driver_m}"
    return line, f"{when} {name} ({word}, driver {driver_m})"


def group_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    """A group of events: how many, their key and severities, then each member."""
    items = list(as_list(data.get("items"))[:_GROUP_ITEMS_MAX])
    raw = data.get("by_severity")
    counts: Counter[str] = Counter()
    for level in SEVERITY_MARKERS:
        n = as_int(dig(raw, level))
        counts[level] = n if n is not None and n > 0 else 0
    if not any(counts.values()):  # redacted or absent: judge by the members carried
        counts.update(severity(_member_data(i)) for i in items)
    count = as_int(data.get("count"))
    count = count if count is not None and count >= len(items) else len(items)
    truncated = as_int(data.get("truncated")) or 0
    more = max(truncated, count - len(items), 0)
    marker = SEVERITY_MARKERS[_worst(counts)]
    key_plain, key_m = _key_words(data.get("key"))
    events = plural(count, "event")
    reason = data.get("reason")
    reason_text = _REASONS.get(reason) if isinstance(reason, str) else None
    first = time_m(data.get("first_occurred_at"), tz)
    last = time_m(data.get("last_occurred_at"), tz)
    by_severity = severity_counts(counts)
    if counts["unknown"]:
        by_severity += f" · {SEVERITY_MARKERS['unknown']} Unknown {counts['unknown']:,}"

    blocks = [header(marker, f"{events} — {key_plain}")]
    summary = [reason_text or "", f"*Between:* {first or '?'} → {last or '?'}"]
    summary.append(f"*By severity:* {by_severity}")
    blocks.append(section("\n".join(s for s in summary if s)))
    members = [_member(i, tz) for i in items]
    blocks.extend(list_sections("Events", [line for line, _ in members], more=more))
    blocks.append(context(context_parts(envelope, type_)))

    held = " (held during quiet hours)" if reason == "muted" else ""
    text = f"{marker} {events} — {key_m}{held}: {by_severity}"
    shown = 0
    for _, fact in members:
        if units(text) + units(fact) + 2 > _GROUP_TEXT_ROOM:
            break
        text += ("; " if shown else " — ") + fact
        shown += 1
    if more + len(members) - shown > 0:
        text += f"; and {more + len(members) - shown:,} more"
    return finish(blocks, text)
