"""Notification envelope → Slack Block Kit message (SPEC §6.2). Pure: no I/O, no clock.

`format_message` never raises, whatever the envelope holds: fields may be missing
(a target's `redact` removes them), of the wrong type, or absurdly long.

Two rules hold for every message it builds:

- **Vendor strings are inert.** Every string that came from the vendor is cleaned
  (control and bidi-override characters collapsed to spaces) and, wherever Slack
  parses mrkdwn — section text, fields, context and the top-level `text` fallback,
  which Slack parses too — escaped (`&` → `&amp;`, `<` → `&lt;`, `>` → `&gt;`). So a
  driver called `<!channel>` cannot ping a channel and `<http://evil|click>` cannot
  become a disguised link. The only raw `<` in mrkdwn are the bridge's own links
  (the map link and video links), whose URLs are checked to be http(s) and whose
  `|` and `>` are percent-encoded. The header is `plain_text`, which Slack never
  parses, so it carries the vendor's text as is.
- **Block Kit limits are respected** (https://api.slack.com/reference/block-kit/blocks):
  header text ≤ 150, section text ≤ 3000, ≤ 10 fields of ≤ 2000, ≤ 10 context
  elements, ≤ 50 blocks; the fallback `text` is kept ≤ 3000. Lengths are measured in
  UTF-16 code units (an emoji counts twice), the stricter of the counts Slack might
  use. Too long text is cut with "…", never mid-link or mid-entity.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, tzinfo
from typing import Any, Final, TypedDict
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.clock import parse_rfc3339

HEADER_MAX: Final = 150
SECTION_TEXT_MAX: Final = 3000
FIELD_MAX: Final = 2000
FIELDS_MAX: Final = 10
CONTEXT_ELEMENTS_MAX: Final = 10
BLOCKS_MAX: Final = 50
TEXT_MAX: Final = 3000
ELLIPSIS: Final = "…"

VALUE_MAX: Final = 200  # one vendor value (a name, an id) before escaping
URL_MAX: Final = 2000  # longer links are left out rather than cut (a cut URL is broken)
LIST_BLOCKS_MAX: Final = 8  # sections one list (videos, trend days) may take

SEVERITY_MARKERS: Final[Mapping[str, str]] = {
    "severe": "🔴",
    "moderate": "🟠",
    "minor": "🟡",
    "unknown": "⚪",
}
"""The colour marker shown before an event's name, by severity."""

_SEVERITY_WORDS: Final = {"severe": "Severe", "moderate": "Moderate", "minor": "Minor"}
_CATEGORY_WORDS: Final = {
    "sensor": "Sensor",
    "adas": "ADAS",
    "dms": "DMS",
    "traffic_sign": "Traffic sign",
    "other": "Other",
}
_CLIP_TITLES: Final = {
    "clip.requested": ("🎬", "Clip requested"),
    "clip.updated": ("🔄", "Clip update"),
    "clip.completed": ("✅", "Clip ready"),
    "clip.failed": ("❌", "Clip failed"),
}
CAMERA_NAMES: Final[Mapping[str, str]] = {
    "C_F": "Front",
    "C_I": "In-cabin",
    "C_R": "Rear",
    "C_E": "Extended (TVI)",
    "GRID": "Grid (combined)",
    "S_F_I": "Front + in-cabin",
}
"""Names of the vendor's camera ids (UPSTREAM.md "Camera ids"), as video links show them."""
_SPARKS: Final = "▁▂▃▄▅▆▇█"
_NOTHING: Final = "—"

# C0/C1 controls, line/paragraph separators and bidi embeddings/overrides/isolates:
# they could fake line breaks or make a name display as something else.
_SPACE = re.compile(r"\s")
_UNSAFE_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


class SlackMessage(TypedDict):
    """The part of a Slack message the bridge builds (webhook body / chat.postMessage)."""

    text: str
    blocks: list[dict[str, Any]]


# --------------------------------------------------------------------------- text helpers


def escape_mrkdwn(text: str) -> str:
    """Escape Slack's control characters so `text` shows literally in mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _units(text: str) -> int:
    """Length in UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _cut(text: str, limit: int) -> str:
    """The longest prefix of `text` of at most `limit` UTF-16 code units."""
    cut = text[:limit]
    while (excess := _units(cut) - limit) > 0:
        cut = cut[: len(cut) - max(1, excess // 2)]
    return cut


def fit(text: str, limit: int) -> str:
    """`text`, or its prefix plus "…" so that it is at most `limit` code units."""
    if _units(text) <= limit:
        return text
    return _cut(text, limit - 1) + ELLIPSIS


def fit_mrkdwn(text: str, limit: int) -> str:
    """Like `fit`, but never cuts inside a `<link|label>` or an `&amp;` entity."""
    if _units(text) <= limit:
        return text
    cut = _cut(text, limit - 1)
    if cut.rfind("<") > cut.rfind(">"):
        cut = cut[: cut.rfind("<")]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + ELLIPSIS


def clean(value: Any, limit: int = VALUE_MAX) -> str | None:
    """A vendor value as one line of plain text (numbers as their text); None if empty."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = str(int(value)) if value.is_integer() and abs(value) < 2**53 else str(value)
    elif isinstance(value, str):
        # Only the start can be shown: cleaning a megabyte to show 200 characters
        # would make one hostile item slow down the whole target.
        head = value[: 2 * limit + 64]
        text = " ".join(_UNSAFE_CHARS.sub(" ", head).split())
        if len(head) < len(value) and text:
            text = fit(text + ELLIPSIS, limit)
    else:
        return None
    return fit(text, limit) if text else None


def _m(value: Any, limit: int = VALUE_MAX) -> str | None:
    """A vendor value cleaned and escaped for mrkdwn; None if empty."""
    text = clean(value, limit)
    return escape_mrkdwn(text) if text is not None else None


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value) if abs(value) < 1e300 else math.inf
    return number if math.isfinite(number) else None


def _count_text(value: Any) -> str | None:
    number = _number(value)
    if number is None:
        return None
    if number.is_integer():
        return f"{int(number):,}"
    return f"{number:,.2f}".rstrip("0").rstrip(".")


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


# --------------------------------------------------------------------------- times, links


def zone(tz: str | tzinfo | None, fallback: tzinfo = UTC) -> tzinfo:
    """A tzinfo from a zone name (`fallback` when unknown: formatting never fails)."""
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        return fallback
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return fallback


def local_time(value: Any, tz: tzinfo) -> str | None:
    """An RFC 3339 instant shown in `tz`, e.g. `2025-11-25 00:00:00 CST`; None if unreadable."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        local = parse_rfc3339(value).astimezone(tz)
    except (ValueError, OverflowError, OSError):
        return None
    name = local.tzname() or ""
    if not name.isalpha():  # zones without an abbreviation say "+08": show the offset
        offset = local.strftime("%z")
        name = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    return f"{local:%Y-%m-%d %H:%M:%S} {name}"


def _time_m(value: Any, tz: tzinfo) -> str | None:
    """A time for mrkdwn: local when readable, else the vendor's text escaped."""
    return local_time(value, tz) or _m(value)


def _coordinate(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def coordinates(location: Any) -> tuple[str, str] | None:
    """`(lat, lng)` as text when `location` holds valid coordinates; else None."""
    lat, lng = _number(_get(location, "lat")), _number(_get(location, "lng"))
    if lat is None or lng is None or not (-90 <= lat <= 90 and -180 <= lng <= 180):
        return None
    return _coordinate(lat), _coordinate(lng)


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
    if not isinstance(url, str) or not 0 < len(url) <= URL_MAX:
        return None
    if _SPACE.search(url) or _UNSAFE_CHARS.search(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    safe = url.replace("&", "&amp;").replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")
    return f"<{safe}|{escape_mrkdwn(label)}>"


# --------------------------------------------------------------------------- blocks


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}


def _mrkdwn(text: str, limit: int) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": fit_mrkdwn(text, limit) or _NOTHING}


def header(marker: str, title: str, suffix: str = "") -> dict[str, Any]:
    """A header block: `marker title suffix`; the title is cut first, never emptied."""
    title = clean(title, HEADER_MAX) or "fleet-bridge notification"
    room = HEADER_MAX - _units(f"{marker} ") - _units(suffix)
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
        block["text"] = _mrkdwn(_NOTHING, SECTION_TEXT_MAX)
    return block


def context(parts: Iterable[str]) -> dict[str, Any]:
    """A context block of mrkdwn elements (at most 10)."""
    elements = [_mrkdwn(p, FIELD_MAX) for p in list(parts)[:CONTEXT_ELEMENTS_MAX] if p]
    return {"type": "context", "elements": elements or [_mrkdwn(_NOTHING, FIELD_MAX)]}


def _field(label: str, value: str | None) -> str:
    return f"*{label}*\n{value or _NOTHING}"


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
        if _units(current) + 1 + _units(line) <= SECTION_TEXT_MAX - 40:
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


def _finish(blocks: list[dict[str, Any]], text: str) -> SlackMessage:
    if len(blocks) > BLOCKS_MAX:
        blocks = [*blocks[: BLOCKS_MAX - 1], context(["…more details left out"])]
    return {"text": fit_mrkdwn(text, TEXT_MAX) or _NOTHING, "blocks": blocks}


def _context_parts(envelope: Mapping[str, Any], type_: str, *extra: str | None) -> list[str]:
    parts = [p for p in extra if p]
    parts.append(escape_mrkdwn(clean(type_, 64) or "notification"))
    notification_id = _m(envelope.get("id"), 64)
    if notification_id:
        parts.append(notification_id)
    return parts


# --------------------------------------------------------------------------- events


def _severity(data: Mapping[str, Any]) -> str:
    value = data.get("severity")
    return value if isinstance(value, str) and value in SEVERITY_MARKERS else "unknown"


def _driver(data: Mapping[str, Any]) -> str | None:
    name = _m(_get(data, "driver", "name"))
    driver_id = _int(_get(data, "driver", "id"))
    if name and driver_id is not None:
        return f"{name} (#{driver_id})"
    return name or (f"#{driver_id}" if driver_id is not None else None)


def _device(data: Mapping[str, Any]) -> str | None:
    return _m(_get(data, "device", "serial_number")) or _m(_get(data, "device", "cid"))


def _clips(count: int | None, total: int | None) -> str | None:
    if count is not None and total is not None:
        return f"{count:,} of {_plural(total, 'clip')}"
    if count is not None:
        return _plural(count, "clip")
    if total is not None:
        return f"{_plural(total, 'clip')} expected"
    return None


def media_state(media: Any, tz: tzinfo) -> str:
    """The media of an event in words: video available / uploading / none, with counts."""
    has_video, uploading = _get(media, "has_video"), _get(media, "uploading")
    expired = _get(media, "expired")
    clips = _clips(_int(_get(media, "videos_count")), _int(_get(media, "videos_total_count")))
    if expired is True:
        state = "⌛ Video expired"
    elif has_video is True and uploading is True:
        state = "🎥 Video available, more uploading"
    elif has_video is True:
        state = "🎥 Video available"
    elif uploading is True:
        state = "⏫ Uploading"
    elif has_video is False:
        state = "No video"
    else:
        state = "Unknown"
    text = f"{state} ({clips})" if clips else state
    expires = local_time(_get(media, "expires_at"), tz)
    if expires and expired is not True and has_video is True:
        text += f"\nexpires {expires}"
    return text


def _flag(value: Any, yes: str, no: str, unknown: str) -> str:
    return yes if value is True else no if value is False else unknown


def _change(path: str, media: Any, tz: tzinfo) -> str:
    value = _get(media, path.removeprefix("media.")) if path.startswith("media.") else None
    count, total = _int(_get(media, "videos_count")), _int(_get(media, "videos_total_count"))
    match path:
        case "media.has_video":
            return _flag(value, "video now available", "video no longer available", "video unknown")
        case "media.uploading":
            return _flag(value, "upload started", "upload finished", "upload state unknown")
        case "media.videos_count" | "media.videos_total_count":
            return f"clips: {_clips(count, total) or 'unknown'}"
        case "media.expired":
            return _flag(value, "video expired", "video no longer expired", "expiry unknown")
        case "media.expires_at":
            when = local_time(value, tz)
            return f"video expires {when}" if when else "expiry cleared"
        case "media.videos":
            names = _camera_names(value)
            return f"video links: {names}" if names else "video links changed"
    return _m(path, 64) or "media"


def _camera_names(videos: Any) -> str | None:
    """ "Front, In-cabin" for the cameras of `media.videos` (escaped); None if none."""
    names: list[str] = []
    for video in _list(videos)[:100]:  # a hostile list is not walked to its end
        name = escape_mrkdwn(camera_name(_get(video, "cam_id")))
        if name not in names:
            names.append(name)
    if not names:
        return None
    more = len(names) - LIST_BLOCKS_MAX
    return ", ".join(names[:LIST_BLOCKS_MAX]) + (f" and {more:,} more" if more > 0 else "")


def what_changed(data: Mapping[str, Any], tz: tzinfo) -> str:
    """The `changed` paths of an event.updated in words (deduplicated, in order)."""
    media = data.get("media")
    phrases: list[str] = []
    for path in _list(data.get("changed"))[:20]:
        if isinstance(path, str):
            phrase = _change(path, media, tz)
            if phrase not in phrases:
                phrases.append(phrase)
    return "; ".join(phrases) or "media state changed"


def _event_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    severity = _severity(data)
    marker = SEVERITY_MARKERS[severity]
    severity_word = _SEVERITY_WORDS.get(severity, "Unknown severity")
    name = clean(_get(data, "event_type", "name")) or "Unknown event"
    name_m = escape_mrkdwn(name)
    updated = type_ == "event.updated"
    vehicle = _m(_get(data, "vehicle", "id"))
    driver = _driver(data)
    device = _device(data)
    when = _time_m(data.get("occurred_at"), tz)
    location = data.get("location")
    trip = _m(data.get("trip_id"))

    blocks = [header(marker, name, " · update" if updated else "")]
    changed = what_changed(data, tz) if updated else None
    if changed:
        blocks.append(section(f"*What changed:* {changed}"))
    fields = [
        _field("Severity", f"{marker} {severity_word}"),
        _field("Time", when),
        _field("Vehicle", vehicle),
        _field("Driver", driver),
        _field("Device", device),
        _field("Location", map_link(location)),
        _field("Media", media_state(data.get("media"), tz)),
    ]
    if trip:
        fields.append(_field("Trip", trip))
    blocks.append(section(fields=fields))
    videos = _get(data, "media", "videos")
    video_blocks, links = _video_blocks(videos, tz)
    blocks.extend(video_blocks)

    ticket = _m(data.get("ticket"), 100)
    raw_category = _get(data, "event_type", "category")
    category = _CATEGORY_WORDS.get(raw_category) if isinstance(raw_category, str) else None
    revision = _int(data.get("revision"))
    linked = _m(data.get("linked_ticket"), 100)
    blocks.append(
        context(
            _context_parts(
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
        f"driver {driver or 'unknown'}",
        f"device {device or 'unknown'}",
        when or "time unknown",
        f"at {coords[0]}, {coords[1]}" if coords else "location unknown",
    ]
    if links and not (changed and "video links" in changed):  # said once is enough
        facts.append(f"{_plural(links, 'video')} ({_camera_names(videos)})")
    lead = f"{marker} {severity_word}: {name_m}"
    if updated:
        lead = f"{marker} Update on {severity_word} {name_m}: {changed}"
    return _finish(blocks, f"{lead} — " + ", ".join(facts))


# --------------------------------------------------------------------------- clips, uploads


def _state(data: Mapping[str, Any]) -> str | None:
    state = clean(data.get("state"), 40)
    code = _int(data.get("state_code"))
    if state is not None:
        state = state.replace("_", " ")
    if state and code is not None:
        return escape_mrkdwn(f"{state} ({code})")
    return escape_mrkdwn(state) if state else (f"state {code}" if code is not None else None)


def _cameras(data: Mapping[str, Any]) -> list[str]:
    lines = []
    for cam in _list(data.get("cameras")):
        cam_id = _m(_get(cam, "cam_id"), 40) or "camera"
        state = _m(_get(cam, "state"), 60)
        number = _int(_get(cam, "state_number"))
        detail = " ".join(
            p for p in (state, f"(state {number})" if number is not None else None) if p
        )
        lines.append(f"• {cam_id}: {detail or 'unknown'}")
    return lines


def _error(data: Mapping[str, Any]) -> str | None:
    code = _m(_get(data, "error", "code"), 40)
    description = _m(_get(data, "error", "description"), 300)
    if code and description:
        return f"{code} — {description}"
    return code or description


def camera_name(cam_id: Any) -> str:
    """A camera's name ("Front", "In-cabin", …); an unknown id as `Camera <id>`."""
    cam = clean(cam_id, 40)
    if cam is None:
        return "Video"
    return CAMERA_NAMES.get(cam.upper(), f"Camera {cam}")


def _videos(videos: Any, tz: tzinfo) -> tuple[list[str], int]:
    """Lines with one video link per camera, and how many videos had no usable link."""
    lines, unusable = [], 0
    for video in _list(videos):
        url_link = link(_get(video, "url"), camera_name(_get(video, "cam_id")))
        if url_link is None:
            unusable += 1
            continue
        notes = [
            _duration(_get(video, "duration_s")),
            f"expires {when}" if (when := local_time(_get(video, "expires_at"), tz)) else None,
        ]
        shown = ", ".join(n for n in notes if n)
        lines.append(f"• {url_link}" + (f" ({shown})" if shown else ""))
    return lines, unusable


def _video_blocks(videos: Any, tz: tzinfo) -> tuple[list[dict[str, Any]], int]:
    """A "Videos" list of links and a note on unusable ones; how many links."""
    lines, unusable = _videos(videos, tz)
    blocks = list_sections("Videos", lines) if lines else []
    if unusable:
        blocks.append(context([f"{_plural(unusable, 'video')} without a usable link"]))
    return blocks, len(lines)


def _duration(value: Any) -> str | None:
    seconds = _int(value)
    return f"{seconds:,} s" if seconds is not None else None


def _task_details(
    data: Mapping[str, Any], tz: tzinfo
) -> tuple[list[dict[str, Any]], str | None, int]:
    """Blocks for error, cameras and videos; the error text; how many video links."""
    blocks = []
    error = _error(data)
    if error:
        blocks.append(section(f"*Error:* {error}"))
    cameras = _cameras(data)
    if cameras:
        blocks.extend(list_sections("Cameras", cameras, max_blocks=3))
    videos, links = _video_blocks(data.get("videos"), tz)
    blocks.extend(videos)
    return blocks, error, links


def _clip_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    icon, title = _CLIP_TITLES.get(type_, ("🎬", "Clip"))
    if type_ == "clip.completed" and data.get("state") == "partial_success":
        icon, title = "⚠️", "Clip partly ready"
    serial = clean(data.get("serial_number"), 60)
    task = _m(data.get("task_id"), 100)
    state = _state(data)
    ticket = _m(data.get("ticket"), 100)
    blocks = [header(icon, title, f" · {serial}" if serial else "")]
    fields = [
        _field("Task", task),
        _field("State", state),
        _field("Device", escape_mrkdwn(serial) if serial else None),
        _field("Camera", _m(data.get("cam_id"), 40)),
        _field("Target time", _time_m(data.get("target_timestamp"), tz)),
        _field("Duration", _duration(data.get("duration_s"))),
        _field("File", _m(data.get("file_name"))),
    ]
    if ticket:
        fields.append(_field("Ticket", ticket))
    blocks.append(section(fields=fields))
    details, error, videos = _task_details(data, tz)
    blocks.extend(details)
    blocks.append(context(_context_parts(envelope, type_, f"Task {task}" if task else None)))

    facts = [
        f"task {task or 'unknown'}",
        f"device {escape_mrkdwn(serial) if serial else 'unknown'}",
        f"state {state or 'unknown'}",
    ]
    if error:
        facts.append(f"error {error}")
    if videos:
        facts.append(_plural(videos, "video"))
    return _finish(blocks, f"{icon} {title}: " + ", ".join(facts))


def _upload_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    event_name = clean(data.get("event_name"))
    device = _m(data.get("serial_number")) or _m(data.get("device_cid"))
    task = _m(data.get("task_id"), 100)
    state = _state(data)
    expired = data.get("expired")
    left_days = _int(data.get("left_days"))
    if expired is True:
        keep = "expired"
    elif left_days is not None:
        keep = f"{_plural(left_days, 'day')} left"
    else:
        keep = None
    blocks = [header("⏫", f"Upload: {event_name}" if event_name else "Upload update")]
    fields = [
        _field("Task", task),
        _field("State", state),
        _field("Device", device),
        _field("Camera", _m(data.get("cam_id"), 40)),
        _field("Target time", _time_m(data.get("target_timestamp"), tz)),
        _field("Duration", _duration(data.get("duration_s"))),
        _field("File", _m(data.get("file_name"))),
        _field("Location", map_link(data.get("location"))),
        _field("Kept", keep),
    ]
    blocks.append(section(fields=fields))
    details, error, videos = _task_details(data, tz)
    blocks.extend(details)
    ticket = _m(data.get("ticket"), 100)
    blocks.append(
        context(
            _context_parts(
                envelope,
                type_,
                f"Task {task}" if task else None,
                f"Ticket {ticket}" if ticket else None,
            )
        )
    )
    name_m = escape_mrkdwn(event_name) if event_name else "manual upload"
    facts = [
        f"task {task or 'unknown'}",
        f"device {device or 'unknown'}",
        f"state {state or 'unknown'}",
    ]
    if error:
        facts.append(f"error {error}")
    if videos:
        facts.append(_plural(videos, "video"))
    return _finish(blocks, f"⏫ Upload of {name_m}: " + ", ".join(facts))


# --------------------------------------------------------------------------- report


def sparkline(values: Sequence[int]) -> str:
    """`▁▃█`-style bars for counts (empty for no values)."""
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(len(_SPARKS) - 1, v * (len(_SPARKS) - 1) // top)] for v in values)


def _trend(data: Mapping[str, Any]) -> tuple[dict[str, Counter[str]], Counter[str], Counter[str]]:
    """Per date severity counts (and "total"), severity totals, event type totals."""
    days: dict[str, Counter[str]] = {}
    severities: Counter[str] = Counter()
    types: Counter[str] = Counter()
    for series in _list(data.get("trend"))[:20]:
        for day in _list(_get(series, "events"))[:400]:
            date = clean(_get(day, "date"), 20) or "?"
            counts = days.setdefault(date, Counter())
            for level in ("severe", "moderate", "minor"):
                n = _int(_get(day, "severity", level)) or 0
                if n > 0:
                    counts[level] += n
                    severities[level] += n
            for t in _list(_get(day, "types"))[:200]:
                n = _int(_get(t, "count")) or 0
                if n > 0:
                    counts["total"] += n
                    types[clean(_get(t, "name"), 60) or "Unknown"] += n
    return days, severities, types


def _severity_counts(counts: Mapping[str, int]) -> str:
    return " · ".join(
        f"{SEVERITY_MARKERS[level]} {_SEVERITY_WORDS[level]} {counts.get(level, 0):,}"
        for level in ("severe", "moderate", "minor")
    )


def _report_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    # The period is a day (week, …) in the report's own zone: show it there.
    report_tz = data.get("tz")
    period_tz = zone(report_tz, fallback=tz)
    since = _time_m(data.get("since"), period_tz) or "?"
    until = _time_m(data.get("until"), period_tz) or "?"
    categories = data.get("categories")
    total = _count_text(data.get("total_events")) or _NOTHING
    blocks = [
        header("📊", "Safety report"),
        section(f"*Period:* {since} → {until}"),
        section(
            fields=[_field("Total events", total)]
            + [
                _field(word, _count_text(_get(categories, key)))
                for key, word in _CATEGORY_WORDS.items()
            ]
        ),
    ]
    days, severities, types = _trend(data)
    if severities:
        blocks.append(section(f"*By severity:* {_severity_counts(severities)}"))
    trips = data.get("trips")
    blocks.append(
        section(
            fields=[
                _field("Trips", _count_text(_get(trips, "total_trips"))),
                _field("Distance", _count_text(_get(trips, "total_distance"))),
                _field("Driving time", _count_text(_get(trips, "total_time"))),
                _field("Idling", _count_text(_get(trips, "total_idling"))),
            ]
        )
    )
    if types:
        top = " · ".join(f"{escape_mrkdwn(name)} {n:,}" for name, n in types.most_common(5))
        blocks.append(section(f"*Most frequent:* {top}"))
    if days:
        dates = sorted(days)
        totals = [days[d]["total"] for d in dates]
        lines = [
            f"`{escape_mrkdwn(d)}` {days[d]['total']:,} — {_severity_counts(days[d])}"
            for d in dates
        ]
        blocks.extend(list_sections(f"Trend {sparkline(totals[-60:])}", lines, max_blocks=3))
    zone_name = _m(report_tz, 64)
    blocks.append(
        context(_context_parts(envelope, type_, f"report zone {zone_name}" if zone_name else None))
    )
    per_category = ", ".join(
        f"{word} {_count_text(_get(categories, key)) or 0}" for key, word in _CATEGORY_WORDS.items()
    )
    text = f"📊 Safety report {since} → {until}: {total} events ({per_category})"
    trip_count = _count_text(_get(trips, "total_trips"))
    if trip_count:
        text += f"; {trip_count} trips"
    return _finish(blocks, text)


# --------------------------------------------------------------------------- event groups

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
    data = _get(item, "data")
    return data if isinstance(data, Mapping) else {}


def _member(item: Any, tz: tzinfo) -> tuple[str, str]:
    """One member of a group as a mrkdwn line and as a fallback fact."""
    data = _member_data(item)
    severity = _severity(data)
    word = _SEVERITY_WORDS.get(severity, "Unknown severity")
    name = _m(_get(data, "event_type", "name")) or "Unknown event"
    if _get(item, "type") == "event.updated":
        name += " (update)"
    when = _time_m(data.get("occurred_at"), tz) or "time unknown"
    driver = _driver(data) or "unknown"
    line = f"{SEVERITY_MARKERS[severity]} {when} · *{name}* · {word} · driver {driver}"
    return line, f"{when} {name} ({word}, driver {driver})"


def _group_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    items = list(_list(data.get("items"))[:_GROUP_ITEMS_MAX])
    raw = data.get("by_severity")
    counts: Counter[str] = Counter()
    for level in SEVERITY_MARKERS:
        n = _int(_get(raw, level))
        counts[level] = n if n is not None and n > 0 else 0
    if not any(counts.values()):  # redacted or absent: judge by the members carried
        counts.update(_severity(_member_data(i)) for i in items)
    count = _int(data.get("count"))
    count = count if count is not None and count >= len(items) else len(items)
    truncated = _int(data.get("truncated")) or 0
    more = max(truncated, count - len(items), 0)
    marker = SEVERITY_MARKERS[_worst(counts)]
    key_plain, key_m = _key_words(data.get("key"))
    events = _plural(count, "event")
    reason = data.get("reason")
    reason_text = _REASONS.get(reason) if isinstance(reason, str) else None
    first = _time_m(data.get("first_occurred_at"), tz)
    last = _time_m(data.get("last_occurred_at"), tz)
    by_severity = _severity_counts(counts)
    if counts["unknown"]:
        by_severity += f" · {SEVERITY_MARKERS['unknown']} Unknown {counts['unknown']:,}"

    blocks = [header(marker, f"{events} — {key_plain}")]
    summary = [reason_text or "", f"*Between:* {first or '?'} → {last or '?'}"]
    summary.append(f"*By severity:* {by_severity}")
    blocks.append(section("\n".join(s for s in summary if s)))
    members = [_member(i, tz) for i in items]
    blocks.extend(list_sections("Events", [line for line, _ in members], more=more))
    blocks.append(context(_context_parts(envelope, type_)))

    held = " (held during quiet hours)" if reason == "muted" else ""
    text = f"{marker} {events} — {key_m}{held}: {by_severity}"
    shown = 0
    for _, fact in members:
        if _units(text) + _units(fact) + 2 > _GROUP_TEXT_ROOM:
            break
        text += ("; " if shown else " — ") + fact
        shown += 1
    if more + len(members) - shown > 0:
        text += f"; and {more + len(members) - shown:,} more"
    return _finish(blocks, text)


# --------------------------------------------------------------------------- others


def _test_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    target = _m(data.get("target"), 64)
    message = _m(data.get("message"), 500)
    lead = f"Test message for target *{target}*" if target else "Test message"
    body = f"{lead}: {message}" if message else f"{lead}. If you can read this, delivery works."
    blocks = [
        header("✅", "fleet-bridge test"),
        section(body),
        context(_context_parts(envelope, type_)),
    ]
    text = f"✅ fleet-bridge test message for target {target}" if target else "✅ fleet-bridge test"
    return _finish(blocks, text)


def _other_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    kind = escape_mrkdwn(clean(type_, 64) or "unknown")
    blocks = [
        header("🔔", "fleet-bridge notification"),
        section(f"A notification of type `{kind}`: see the receiver's logs for its data."),
        context(_context_parts(envelope, type_)),
    ]
    return _finish(blocks, f"🔔 fleet-bridge notification ({kind})")


_Formatter = Callable[[Mapping[str, Any], str, Mapping[str, Any], tzinfo], SlackMessage]


def _formatter(type_: str) -> _Formatter:
    if type_ in ("event.created", "event.updated"):
        return _event_message
    if type_ == "event.group":
        return _group_message
    if type_.startswith("clip."):
        return _clip_message
    if type_ == "upload.updated":
        return _upload_message
    if type_ == "report.safety":
        return _report_message
    if type_ == "bridge.test":
        return _test_message
    return _other_message


def format_message(envelope: Mapping[str, Any], *, tz: str | tzinfo | None = "UTC") -> SlackMessage:
    """The Slack message (`text` fallback + Block Kit `blocks`) for one notification.

    Times are shown in `tz` (a zone name or tzinfo). Never raises.
    """
    envelope = envelope if isinstance(envelope, Mapping) else {}
    type_ = envelope.get("type")
    type_ = type_ if isinstance(type_, str) else "unknown"
    data = envelope.get("data")
    data = data if isinstance(data, Mapping) else {}
    return _formatter(type_)(envelope, type_, data, zone(tz))
