"""Typed views of the vendor's payloads (UPSTREAM.md), tolerant by design, for the tests.

The vendor documents few fields and sends loose types (GPS as strings, severity as
a word or a number), so every model here accepts unknown fields (`extra="allow"`),
treats every field as optional, and reads values leniently: numeric strings
become numbers, 0/1 and "true"/"false" become bools, and a value of the wrong
kind becomes None instead of failing validation. The tests check that validating a
vendor item with these models never fails on content and agrees with the pure
normalizer (`bridge.normalize`), which works on plain mappings with the same
readers. The runtime package keeps only the push body's model
(`bridge.upstream.models`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

from bridge.normalize import as_bool, as_float, as_int, as_str
from bridge.upstream.models import LooseStr, VendorModel


def _object_or_none(value: Any) -> Any:
    return value if isinstance(value, dict | BaseModel) else None


def _objects(value: Any) -> Any:
    """A list keeping only its objects (a list of nested models never fails)."""
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, dict | BaseModel)]


def _strings(value: Any) -> Any:
    if not isinstance(value, list):
        return None
    return [t for t in (as_str(v) for v in value) if t is not None]


def _word_or_number(value: Any) -> int | str | None:
    number = as_int(value)
    return number if number is not None else as_str(value)


LooseInt = Annotated[int | None, BeforeValidator(as_int)]
"""An int from an int, an integral float or a numeric string; else None."""
LooseFloat = Annotated[float | None, BeforeValidator(as_float)]
"""A finite float from a number or a numeric string; else None."""
LooseBool = Annotated[bool | None, BeforeValidator(as_bool)]
"""A bool from a bool, 0/1 or true/false; else None."""
WordOrNumber = Annotated[int | str | None, BeforeValidator(_word_or_number)]
"""A severity: a number (1/2/3) or a word (Minor); else None."""


class AssetInfo(VendorModel):
    """`asset_info` of an event list item."""

    uploading: LooseBool = None
    has_video: LooseBool = None


class EventItem(VendorModel):
    """One item of `GET /V2/events` → `data[]`."""

    asset_info: Annotated[AssetInfo | None, BeforeValidator(_object_or_none)] = None
    car_id: LooseInt = None
    clicked_count: LooseInt = None
    device_cid: LooseStr = None
    driver_avatar: LooseStr = None
    driver_id: LooseInt = None
    driver_name: LooseStr = None
    driver_status: LooseInt = None
    expired: LooseBool = None
    expiry: LooseInt = None
    is_new: LooseBool = None
    lat: LooseFloat = None
    lng: LooseFloat = None
    name: LooseStr = None
    recording_id: LooseInt = None
    severity_level: WordOrNumber = None
    tag: LooseStr = None
    ticket: LooseStr = None
    ticket_linked: LooseStr = None
    timestamp: LooseInt = None
    trip_id: LooseInt = None
    type: LooseInt = None
    type_name: LooseStr = None
    upload_status: LooseInt = None
    uuid: LooseStr = None
    video_uploaded: LooseInt = None
    videos_count: LooseInt = None
    videos_total_count: LooseInt = None


class PushGps(VendorModel):
    """GPS of a push message; the vendor sends every value as a string."""

    lat: LooseStr = None
    lng: LooseStr = None
    alt: LooseStr = None
    speed: LooseStr = None
    direction: LooseStr = None


class PushMedia(VendorModel):
    """`snapshots` / `video` of a push message."""

    count: LooseInt = None
    capture_mode: Annotated[list[str] | None, BeforeValidator(_strings)] = None


class PushNfc(VendorModel):
    """`nfc` of a push message (a driver card)."""

    id: LooseStr = None


class PushMessage(VendorModel):
    """The decoded `message` of an `EVENT_TRIGGERED` / `ASSET_UPLOADED` push."""

    device_sn: LooseStr = None
    device_cid: LooseStr = None
    gps: Annotated[PushGps | None, BeforeValidator(_object_or_none)] = None
    timestamp: LooseInt = None
    event_type: LooseInt = None
    event_name: LooseStr = None
    ticket: LooseStr = None
    severity_level: WordOrNumber = None  # a word ("Minor") or a number
    task_id: LooseStr = None
    detail: LooseStr = None
    snapshots: Annotated[PushMedia | None, BeforeValidator(_object_or_none)] = None
    video: Annotated[PushMedia | None, BeforeValidator(_object_or_none)] = None
    nfc: Annotated[PushNfc | None, BeforeValidator(_object_or_none)] = None


# --------------------------------------------------------------------------- remote tasks


class ProgressStatus(VendorModel):
    """One camera's progress inside `last_ack_message.progress_status`."""

    camId: LooseStr = None  # the vendor's field name
    state: LooseStr = None
    report_at: LooseInt = None
    state_number: LooseInt = None


class AckMessage(VendorModel):
    """`last_ack_message` (and each entry of `process_history`)."""

    code: LooseStr = None
    desc: LooseStr = None
    state: LooseStr = None
    report_at: LooseInt = None
    state_desc: LooseStr = None
    progress_status: Annotated[list[ProgressStatus], BeforeValidator(_objects)] = Field(
        default_factory=list
    )


class TaskResult(VendorModel):
    """`GET /V2/event/taskResult/{taskId}` → `data`."""

    task_id: LooseStr = None
    task_state: LooseInt = None
    last_ack_message: Annotated[AckMessage | None, BeforeValidator(_object_or_none)] = None
    process_history: Annotated[list[AckMessage], BeforeValidator(_objects)] = Field(
        default_factory=list
    )
    ticket: LooseStr = None


class StorageItem(VendorModel):
    """One item of `GET /V2/event/StorageList` → `data[]` (a manual upload)."""

    task_id: LooseStr = None
    task_state: LooseInt = None
    device_cid: LooseStr = None
    event_name: LooseStr = None
    expired: LooseBool = None
    left_days: LooseInt = None
    lat: LooseFloat = None
    lng: LooseFloat = None
    video_id: LooseStr = None
    tag: LooseStr = None
    trip_id: LooseInt = None
    ticket: LooseStr = None
    last_ack_message: Annotated[AckMessage | None, BeforeValidator(_object_or_none)] = None


class Video(VendorModel):
    """One video of `POST /V2/event/GetVideoDetail` → `data.videos[]`."""

    cam_id: LooseStr = None
    url: LooseStr = None
    duration: LooseFloat = None
    expires_at: Annotated[int | str | None, BeforeValidator(_word_or_number)] = None


class VideoDetail(VendorModel):
    """`POST /V2/event/GetVideoDetail` → `data`."""

    videos: Annotated[list[Video], BeforeValidator(_objects)] = Field(default_factory=list)

    def video_dicts(self) -> list[dict[str, Any]]:
        """The videos as plain dicts (what `bridge.normalize.clip_data` takes)."""
        return [v.model_dump() for v in self.videos]
