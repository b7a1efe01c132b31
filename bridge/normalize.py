"""Vendor items → notification `data` (SPEC §3). Pure: no I/O, no clock, no loop.

The vendor documents few fields and sends loose types, so every reader here is
tolerant: a missing or unreadable optional field becomes `null`. Only what makes
an item meaningless — no ticket, no usable timestamp, a type code that is not a
number — raises `MalformedItem`; nothing else is ever raised for any input.

Events carry a media *fingerprint* beside their `data`: the media fields the
source actually carried. The poll list has them all; a vendor push only some, so
`bridge.dedup` compares only fields present on both sides ("a field absent from
one source is not a change").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.clock import parse_rfc3339, utc_iso
from bridge.event_types import EventTypeTable, category_from_name
from bridge.settings import Category, Severity

# Unix seconds a datetime can represent (0001-01-01 .. 9999-12-31); anything else,
# e.g. a millisecond timestamp from a confused device, makes the item malformed.
MIN_TIMESTAMP: Final = 0
MAX_TIMESTAMP: Final = 253_402_300_799

_SEVERITY_BY_LEVEL: Final[Mapping[int, Severity]] = {1: "minor", 2: "moderate", 3: "severe"}
_SEVERITY_BY_WORD: Final[Mapping[str, Severity]] = {w: w for w in ("minor", "moderate", "severe")}

TASK_STATES: Final[Mapping[int, str]] = {
    0: "upcoming",
    1: "processing",
    2: "success",
    3: "failed",
    4: "clipping",
    5: "uploading",
    6: "partial_success",
}
"""Remote task states (seed "task state")."""

CLIP_TERMINAL_STATES: Final[frozenset[int]] = frozenset({2, 3, 6})
"""Task states after which a task never changes: Success, Failed, Partial Success."""

CAMERA_ERRORS: Final[Mapping[str, str]] = {
    "D_E20001": "Video is not existing",
    "D_E20002": "Videos merges fail",
    "D_E20003": "Clip process is busy",
    "D_E20004": "Device is busy on uploading events",
    "D_E20005": "Failed to get ticket from server",
    "D_E20006": "2nd SDCard is unmounted",
    "D_E20007": "The task is finished but failed",
    "D_E20009": "Insufficient internal flash storage space",
    "D_E20010": "Upload time expired",
}
"""Camera error codes and descriptions (seed "camera codes")."""

# A camera's `state_number` that means the same as an error code, for tasks whose
# ack carries no code: 4 "Video not found" and 7 "Upload time expired" (seed).
_STATE_NUMBER_ERRORS: Final[Mapping[int, str]] = {4: "D_E20001", 7: "D_E20010"}

CATEGORIES: Final[tuple[Category, ...]] = ("sensor", "adas", "dms", "traffic_sign", "other")

_INT_STR = re.compile(r"\s*[-+]?\d+\s*")


class MalformedItem(ValueError):
    """A vendor item that cannot become a notification; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- readers


def as_int(value: Any) -> int | None:
    """An int from an int, an integral float or a numeric string; else None."""
    # Exact-type fast paths first (vendor JSON is mostly plain ints and strings): the
    # readers run ~20 times per event, and each isinstance chain costs ~0.1 µs.
    if type(value) is int:
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and len(value) < 64 and _INT_STR.fullmatch(value):
        return int(value)
    if isinstance(value, str):
        number = as_float(value)
        if number is not None and number.is_integer() and abs(number) < 2**63:
            return int(number)
    return None


def as_float(value: Any) -> float | None:
    """A finite float from a number or a numeric string; else None."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if value is None:
        return None
    if kind is int:
        return float(value) if abs(value) < 2**1023 else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value) if abs(value) < 2**1023 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) < 64:
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def as_str(value: Any) -> str | None:
    """A non-empty string; numbers are accepted as their text; else None."""
    if type(value) is str:
        # Empty or all whitespace (the same definition as strip's): None.
        return None if not value or value.isspace() else value
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return None


def as_bool(value: Any) -> bool | None:
    """A bool from a bool, 0/1 or the words true/false; else None."""
    if value is True or value is False:
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "1", "yes"):
            return True
        if word in ("false", "0", "no"):
            return False
    return None


def _number(value: Any) -> int | float | None:
    """An int when the value is integral, else a finite float; else None."""
    number = as_float(value)
    if number is None:
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


def _time(value: Any) -> str | None:
    """RFC 3339 UTC from Unix seconds (0 / missing / out of range → None)."""
    if type(value) is int:  # the vendor's usual form: no float round trip
        return utc_iso(value) if 0 < value <= MAX_TIMESTAMP else None
    seconds = as_float(value)
    if seconds is None or seconds <= 0 or seconds > MAX_TIMESTAMP:
        if isinstance(value, str):
            return _iso_time(value)
        return None
    return utc_iso(seconds)


def _iso_time(value: str) -> str | None:
    """An ISO-8601 instant with a zone, re-rendered as RFC 3339 UTC; else None."""
    try:
        return utc_iso(parse_rfc3339(value).timestamp())
    except (OverflowError, OSError, ValueError):
        return None


def severity(value: Any, overrides: Mapping[str, Severity] | None = None) -> Severity:
    """`severity_level` 1/2/3 (or "1") and Minor/Moderate/Severe → our word; else unknown.

    `overrides` (lower-case vendor value → severity) win over the built-in mapping.
    """
    level = as_int(value)
    if overrides:
        key = str(level) if level is not None else str(value).strip().lower()
        if key in overrides:
            return overrides[key]
    if level is not None:
        return _SEVERITY_BY_LEVEL.get(level, "unknown")
    if isinstance(value, str):
        return _SEVERITY_BY_WORD.get(value.strip().lower(), "unknown")
    return "unknown"


# --------------------------------------------------------------------------- events


@dataclass(slots=True)
class NormalizedEvent:
    """An event ready for de-dup: its `data` (no revision yet) and media fingerprint.

    Treated as immutable (`dataclasses.replace` to change one); not frozen because a
    frozen dataclass's `__init__` costs ~0.4 µs more per instance, once per event.
    """

    ticket: str
    data: dict[str, Any]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    occurred_at: float = 0.0


def _ticket(item: Mapping[str, Any]) -> str:
    ticket = item.get("ticket")
    if not isinstance(ticket, str) or not ticket.strip():
        raise MalformedItem("missing ticket")
    return ticket.strip()


def _timestamp(item: Mapping[str, Any]) -> int:
    raw = item.get("timestamp")
    if raw is None:
        raise MalformedItem("missing timestamp")
    ts = as_int(raw)
    if ts is None:
        raise MalformedItem("timestamp is not an integer")
    if not MIN_TIMESTAMP <= ts <= MAX_TIMESTAMP:
        raise MalformedItem("timestamp out of range")
    return ts


def _type_code(item: Mapping[str, Any], key: str) -> int | None:
    raw = item.get(key)
    if raw is None:
        return None
    code = as_int(raw)
    if code is None or abs(code) >= 2**53:
        raise MalformedItem("type code is not an integer")
    return code


def _location(lat: Any, lng: Any) -> dict[str, float] | None:
    la, ln = as_float(lat), as_float(lng)
    if la is None or ln is None or not (-90 <= la <= 90 and -180 <= ln <= 180):
        return None
    return {"lat": la, "lng": ln}


def _media(item: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`media` of an event and the fingerprint of the fields the source carried."""
    carried: dict[str, Any] = {}
    asset = item.get("asset_info")
    if type(asset) is dict or isinstance(asset, Mapping):
        for key in ("has_video", "uploading"):
            if key in asset:
                carried[key] = as_bool(asset[key])
    for key in ("has_video", "uploading"):
        # A flat field (some pushes) only counts when asset_info did not carry it.
        if key in item and key not in carried:
            carried[key] = as_bool(item[key])
    for key in ("videos_count", "videos_total_count"):
        if key in item:
            number = as_int(item[key])
            carried[key] = number if number is not None and number >= 0 else None
    video = item.get("video")
    if video is not None and isinstance(video, Mapping) and "count" in video:
        # Vendor push: `video.count` is how many clips the event has so far.
        count = as_int(video["count"])
        if count is not None and count >= 0:
            carried.setdefault("videos_count", count)
            carried.setdefault("has_video", count > 0)
    if "expired" in item:
        carried["expired"] = as_bool(item["expired"])
    if "expiry" in item:
        carried["expires_at"] = _time(item["expiry"])
    elif "expires_at" in item:
        carried["expires_at"] = _time(item["expires_at"])
    media = {
        "has_video": carried.get("has_video"),
        "uploading": carried.get("uploading"),
        "videos_count": carried.get("videos_count"),
        "videos_total_count": carried.get("videos_total_count"),
        "expired": carried.get("expired"),
        "expires_at": carried.get("expires_at"),
        "videos": None,  # filled by bridge.video_links when the files are fetched
    }
    return media, carried


def _event(
    item: Mapping[str, Any],
    *,
    ticket: str,
    ts: int,
    code: int | None,
    name: str,
    category: Category,
    serial_number: str | None,
    location: dict[str, float] | None,
    severity_levels: Mapping[str, Severity],
) -> NormalizedEvent:
    media, fingerprint = _media(item)
    driver = {"id": as_int(item.get("driver_id")), "name": as_str(item.get("driver_name"))}
    data: dict[str, Any] = {
        "ticket": ticket,
        "linked_ticket": as_str(item.get("ticket_linked")),
        "event_type": {"code": code, "name": name, "category": category},
        "severity": severity(item.get("severity_level"), severity_levels),
        "occurred_at": utc_iso(ts),
        "device": {"cid": as_str(item.get("device_cid")), "serial_number": serial_number},
        "vehicle": {"id": as_int(item.get("car_id"))},
        "driver": driver,
        "location": location,
        "trip_id": as_int(item.get("trip_id")),
        "media": media,
        "detail": None,  # filled by bridge.enrich when poll.events.detail is on
    }
    return NormalizedEvent(ticket=ticket, data=data, fingerprint=fingerprint, occurred_at=float(ts))


def normalize_event(item: Mapping[str, Any], table: EventTypeTable) -> NormalizedEvent:
    """An item of `GET /V2/events` → `data` of `event.*` (without revision/changed)."""
    if type(item) is not dict and not isinstance(item, Mapping):
        raise MalformedItem("item is not an object")
    ticket = _ticket(item)
    ts = _timestamp(item)
    code = _type_code(item, "type")
    name, category = table.classify(code, as_str(item.get("type_name")), as_str(item.get("name")))
    return _event(
        item,
        ticket=ticket,
        ts=ts,
        code=code,
        name=name,
        category=category,
        serial_number=as_str(item.get("serial_number")),
        location=_location(item.get("lat"), item.get("lng")),
        severity_levels=table.severity_levels,
    )


def normalize_push_event(message: Mapping[str, Any], table: EventTypeTable) -> NormalizedEvent:
    """A decoded `EVENT_TRIGGERED` / `ASSET_UPLOADED` push message → `data` of `event.*`.

    Only the media fields the push carries (e.g. `video.count`) enter the
    fingerprint, so a later poll of the same ticket is not mistaken for a change.
    """
    if not isinstance(message, Mapping):
        raise MalformedItem("message is not an object")
    ticket = _ticket(message)
    ts = _timestamp(message)
    code = _type_code(message, "event_type")
    name, category = table.classify(
        code, as_str(message.get("event_name")), as_str(message.get("type_name"))
    )
    gps = _mapping(message.get("gps"))
    location = _location(gps.get("lat"), gps.get("lng"))
    if location is None:
        location = _location(message.get("lat"), message.get("lng"))
    return _event(
        message,
        ticket=ticket,
        ts=ts,
        code=code,
        name=name,
        category=category,
        serial_number=as_str(message.get("device_sn")) or as_str(message.get("serial_number")),
        location=location,
        severity_levels=table.severity_levels,
    )


# --------------------------------------------------------------------------- clips / uploads


def task_state_name(code: int | None) -> str | None:
    """`upcoming` … `partial_success` for task states 0-6; None for anything else."""
    return TASK_STATES.get(code) if code is not None else None


def _ack(task: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(task.get("last_ack_message"))


def _cameras(ack: Mapping[str, Any]) -> list[dict[str, Any]]:
    cameras = []
    for entry in _list(ack.get("progress_status")):
        if not isinstance(entry, Mapping):
            continue
        cameras.append(
            {
                "cam_id": as_str(entry.get("camId")) or as_str(entry.get("cam_id")),
                "state": as_str(entry.get("state")),
                "state_number": as_int(entry.get("state_number")),
            }
        )
    return cameras


def _error_code(value: Any) -> str | None:
    code = as_str(value)
    if code is None:
        return None
    code = code.strip().upper()
    return code if code.startswith("D_E") else None


def _clip_error(task: Mapping[str, Any], state_code: int | None) -> dict[str, Any] | None:
    """The camera error of a task: the ack's code, a camera entry's, or the history's."""
    ack = _ack(task)
    acks: list[Mapping[str, Any]] = [ack]
    acks += [_mapping(h) for h in reversed(_list(task.get("process_history")))]
    for candidate in acks:
        code = _error_code(candidate.get("code"))
        if code is not None:
            return {"code": code, "description": _error_description(code, candidate)}
        for entry in _list(candidate.get("progress_status")):
            entry_map = _mapping(entry)
            code = _error_code(entry_map.get("code"))
            if code is not None:
                return {"code": code, "description": _error_description(code, entry_map)}
    if state_code in (3, 6):
        for entry in _list(ack.get("progress_status")):
            number = as_int(_mapping(entry).get("state_number"))
            code = _STATE_NUMBER_ERRORS.get(number) if number is not None else None
            if code is not None:
                return {"code": code, "description": CAMERA_ERRORS[code]}
    return None


def _error_description(code: str, source: Mapping[str, Any]) -> str | None:
    return CAMERA_ERRORS.get(code) or as_str(source.get("desc"))


def _videos(videos: Any) -> list[dict[str, Any]]:
    """`videos` of `clip.*` and `upload.updated`: cam_id, url, expires_at."""
    return [
        {"cam_id": v["cam_id"], "url": v["url"], "expires_at": v["expires_at"]}
        for v in event_videos(videos)
    ]


def event_videos(videos: Any) -> list[dict[str, Any]]:
    """GetVideoDetail `videos` → `media.videos` of an event (entries without a URL dropped)."""
    out = []
    for v in _list(videos):
        if not isinstance(v, Mapping):
            continue
        url = as_str(v.get("url"))
        if url is None:
            continue
        duration = _number(v.get("duration", v.get("duration_s")))
        out.append(
            {
                "cam_id": as_str(v.get("cam_id")) or as_str(v.get("camId")),
                "url": url,
                "duration_s": duration if duration is not None and duration >= 0 else None,
                "expires_at": _time(v.get("expires_at")),
            }
        )
    return out


def _task_fields(task: Mapping[str, Any]) -> dict[str, Any]:
    raw_state = task.get("task_state")
    # A task without a state yet has just been sent to the device: Upcoming.
    state_code = 0 if raw_state is None else as_int(raw_state)
    return {
        "state": task_state_name(state_code),
        "state_code": state_code,
        "cameras": _cameras(_ack(task)),
        "error": _clip_error(task, state_code),
    }


def _task_id(task: Mapping[str, Any]) -> str | None:
    return as_str(task.get("task_id")) or as_str(task.get("taskId"))


def clip_data(
    task: Mapping[str, Any],
    *,
    serial_number: str,
    cam_id: str,
    file_name: str,
    target_timestamp: int,
    duration_s: int,
    videos: Sequence[Mapping[str, Any]] | None = None,
    ticket: str | None = None,
) -> dict[str, Any]:
    """`data` of `clip.*` from a taskResult `data` and the original request."""
    task = _mapping(task)
    return {
        "task_id": _task_id(task),
        "serial_number": serial_number,
        "cam_id": cam_id,
        "file_name": file_name,
        "target_timestamp": _time(target_timestamp) or utc_iso(0),
        "duration_s": duration_s,
        **_task_fields(task),
        "videos": _videos(videos),
        "ticket": ticket or as_str(task.get("ticket")),
    }


def clip_type(state_code: int | None) -> str:
    """The notification type a task state calls for (terminal states end the clip)."""
    if state_code in (2, 6):
        return "clip.completed"
    if state_code == 3:
        return "clip.failed"
    return "clip.updated"


def upload_data(item: Mapping[str, Any]) -> dict[str, Any]:
    """`data` of `upload.updated` from a StorageList item (a manual upload)."""
    item = _mapping(item)
    duration = as_int(item.get("duration_s"))
    if duration is None:
        duration = as_int(item.get("duration_in_seconds"))
    if duration is None:
        duration = as_int(item.get("duration"))
    return {
        "task_id": _task_id(item),
        "serial_number": as_str(item.get("serial_number")) or as_str(item.get("device_sn")),
        "cam_id": as_str(item.get("cam_id")),
        "file_name": as_str(item.get("file_name")),
        "target_timestamp": _time(item.get("target_timestamp")),
        "duration_s": duration,
        **_task_fields(item),
        "videos": _videos(item.get("videos")),
        "ticket": as_str(item.get("ticket")),
        "device_cid": as_str(item.get("device_cid")),
        "event_name": as_str(item.get("event_name")),
        "video_id": as_str(item.get("video_id")),
        "expired": as_bool(item.get("expired")),
        "left_days": as_int(item.get("left_days")),
        "location": _location(item.get("lat"), item.get("lng")),
        "trip_id": as_int(item.get("trip_id")),
    }


# --------------------------------------------------------------------------- safety report


def report_category(value: Any) -> Category:
    """A vendor category label ("AI(ADAS) Event", "Traffic sign", …) → our category."""
    label = as_str(value)
    if label is None:
        return "other"
    squashed = re.sub(r"[^a-z0-9]", "", label.lower())
    if "adas" in squashed:
        return "adas"
    if "dms" in squashed:
        return "dms"
    if "traffic" in squashed or "sign" in squashed:
        return "traffic_sign"
    if "sensor" in squashed:
        return "sensor"
    if squashed in CATEGORIES:
        return squashed
    return category_from_name(label)


def _count(value: Any) -> int:
    number = as_int(value)
    return number if number is not None and number > 0 else 0


def _report_trend(trend: Any, table: EventTypeTable) -> list[dict[str, Any]]:
    out = []
    for series in _list(trend):
        if not isinstance(series, Mapping):
            continue
        days = []
        for day in _list(series.get("events")):
            if not isinstance(day, Mapping):
                continue
            types = []
            for t in _list(day.get("types")):
                if not isinstance(t, Mapping):
                    continue
                code = as_int(t.get("type"))
                if code is not None and abs(code) >= 2**53:
                    code = None
                type_name, name = as_str(t.get("type_name")), as_str(t.get("name"))
                name, category = table.classify(code, type_name, name)
                types.append(
                    {
                        "code": code,
                        "name": name,
                        "category": category,
                        "count": _count(t.get("count")),
                    }
                )
            sev = _mapping(day.get("severity"))
            days.append(
                {
                    "date": as_str(day.get("date")),
                    "types": types,
                    "severity": {
                        "minor": _count(sev.get("lv_1")),
                        "moderate": _count(sev.get("lv_2")),
                        "severe": _count(sev.get("lv_3")),
                    },
                }
            )
        out.append({"category": report_category(series.get("trend_type")), "events": days})
    return out


def report_data(
    report: Mapping[str, Any], *, since: float, until: float, tz: str, table: EventTypeTable
) -> dict[str, Any]:
    """`data` of `report.safety` from `/V2/analytics/safety` (`data` or the top level)."""
    report = _mapping(report)
    inner = _mapping(report.get("data"))
    if "summary" in inner or "trend" in inner:
        report = inner
    summary = _mapping(report.get("summary"))
    categories: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
    for entry in _list(summary.get("event_category")):
        if isinstance(entry, Mapping):
            categories[report_category(entry.get("category"))] += _count(entry.get("count"))
    trip = _mapping(summary.get("trip"))
    trips = {
        key: _number(trip.get(key))
        for key in ("total_trips", "total_distance", "total_time", "total_idling")
    }
    return {
        "since": utc_iso(since),
        "until": utc_iso(until),
        "tz": tz,
        "categories": categories,
        "total_events": sum(categories.values()),
        "trips": trips,
        "trend": _report_trend(report.get("trend"), table),
    }
