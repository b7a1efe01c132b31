"""`event.created` / `event.updated` as a Slack message, and the words for severities
and categories that the group and report messages share. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import tzinfo
from typing import Any, Final

from bridge.display import as_int, clean, coordinates, dig, plural
from bridge.markup import escape_mrkdwn
from bridge.slack_format.blocks import (
    SlackMessage,
    context,
    context_parts,
    field,
    finish,
    header,
    m,
    map_link,
    section,
    time_m,
)
from bridge.slack_format.media import camera_names, media_state, video_blocks, what_changed

SEVERITY_MARKERS: Final[Mapping[str, str]] = {
    "severe": "🔴",
    "moderate": "🟠",
    "minor": "🟡",
    "unknown": "⚪",
}
"""The colour marker shown before an event's name, by severity."""

SEVERITY_WORDS: Final = {"severe": "Severe", "moderate": "Moderate", "minor": "Minor"}
CATEGORY_WORDS: Final = {
    "sensor": "Sensor",
    "adas": "ADAS",
    "dms": "DMS",
    "traffic_sign": "Traffic sign",
    "other": "Other",
}


def severity(data: Mapping[str, Any]) -> str:
    """The event's severity, `unknown` unless it is one the bridge knows."""
    value = data.get("severity")
    return value if isinstance(value, str) and value in SEVERITY_MARKERS else "unknown"


def severity_counts(counts: Mapping[str, int]) -> str:
    """`🔴 Severe 1 · 🟠 Moderate 0 · 🟡 Minor 2`."""
    return " · ".join(
        f"{SEVERITY_MARKERS[level]} {SEVERITY_WORDS[level]} {counts.get(level, 0):,}"
        for level in ("severe", "moderate", "minor")
    )


def driver(data: Mapping[str, Any]) -> str | None:
    """`Jane Doe (#7)` for mrkdwn, or as much of it as the data has."""
    name = m(dig(data, "driver", "name"))
    driver_id = as_int(dig(data, "driver", "id"))
    if name and driver_id is not None:
        return f"{name} (#{driver_id})"
    return name or (f"#{driver_id}" if driver_id is not None else None)


def _device(data: Mapping[str, Any]) -> str | None:
    return m(dig(data, "device", "serial_number")) or m(dig(data, "device", "cid"))


def event_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    """An event alert (or the update of one, saying what changed)."""
    level = severity(data)
    marker = SEVERITY_MARKERS[level]
    severity_word = SEVERITY_WORDS.get(level, "Unknown severity")
    name = clean(dig(data, "event_type", "name")) or "Unknown event"
    name_m = escape_mrkdwn(name)
    updated = type_ == "event.updated"
    vehicle = m(dig(data, "vehicle", "id"))
    driver_m = driver(data)
    device = _device(data)
    when = time_m(data.get("occurred_at"), tz)
    location = data.get("location")
    trip = m(data.get("trip_id"))

    blocks = [header(marker, name, " · update" if updated else "")]
    changed = what_changed(data, tz) if updated else None
    if changed:
        blocks.append(section(f"*What changed:* {changed}"))
    fields = [
        field("Severity", f"{marker} {severity_word}"),
        field("Time", when),
        field("Vehicle", vehicle),
        field("Driver", driver_m),
        field("Device", device),
        field("Location", map_link(location)),
        field("Media", media_state(data.get("media"), tz)),
    ]
    if trip:
        fields.append(field("Trip", trip))
    blocks.append(section(fields=fields))
    videos = dig(data, "media", "videos")
    videos_shown, links = video_blocks(videos, tz)
    blocks.extend(videos_shown)

    ticket = m(data.get("ticket"), 100)
    raw_category = dig(data, "event_type", "category")
    category = CATEGORY_WORDS.get(raw_category) if isinstance(raw_category, str) else None
    revision = as_int(data.get("revision"))
    linked = m(data.get("linked_ticket"), 100)
    blocks.append(
        context(
            context_parts(
                envelope,
                type_,
                f"Ticket {ticket}" if ticket else None,
                f"linked {linked}" if linked else None,
                category,
                f"revision {revision}" if updated and revision is not None else None,
            )
        )
    )

    coords = coordinates(location)
    facts = [
        f"vehicle {vehicle or 'unknown'}",
        f"driver {driver_m or 'unknown'}",
        f"device {device or 'unknown'}",
        when or "time unknown",
        f"at {coords[0]}, {coords[1]}" if coords else "location unknown",
    ]
    if links and not (changed and "video links" in changed):  # said once is enough
        facts.append(f"{plural(links, 'video')} ({camera_names(videos)})")
    lead = f"{marker} {severity_word}: {name_m}"
    if updated:
        lead = f"{marker} Update on {severity_word} {name_m}: {changed}"
    return finish(blocks, f"{lead} — " + ", ".join(facts))
