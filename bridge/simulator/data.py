"""Deterministic test data: devices, drivers, event types and vendor-shaped events.

Everything random comes from a `random.Random` the caller owns, so one seed gives
one fleet and one event stream.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

SENSOR = "Sensor Event"
ADAS = "AI(ADAS) Event"
DMS = "AI(DMS) Event"
TRAFFIC = "Traffic sign"
CATEGORIES: tuple[str, ...] = (SENSOR, ADAS, TRAFFIC, DMS)
"""The four categories of the safety report, named as the vendor's page names them."""

MEDIA_TTL_S = 30 * 86400
"""How long media stays downloadable (`expiry`); an assumption, the vendor does not say."""

CLIP_TYPE = 27
"""Type code of events created by videoClip (manual upload); the seed uses 27-29."""


@dataclass(frozen=True, slots=True)
class EventType:
    code: int
    name: str
    category: str | None  # None: not a safety event (e.g. Start Up), not in the report
    weight: float  # relative frequency in generated traffic


# Codes 1 and 5 are public; the others are invented (the vendor does not publish
# them), with the names UPSTREAM.md lists.
EVENT_TYPES: tuple[EventType, ...] = (
    EventType(1, "Impact", SENSOR, 3),
    EventType(3, "Harsh Acceleration", SENSOR, 8),
    EventType(4, "Harsh Braking", SENSOR, 10),
    EventType(5, "Start Up", None, 8),
    EventType(6, "Harsh Cornering", SENSOR, 6),
    EventType(7, "Impact Parking", SENSOR, 1),
    EventType(11, "FCW", ADAS, 6),
    EventType(12, "Tailgating", ADAS, 7),
    EventType(13, "Stop and Go", ADAS, 3),
    EventType(22, "LDW", ADAS, 6),
    EventType(31, "Distraction", DMS, 6),
    EventType(32, "Phoning", DMS, 5),
    EventType(33, "Smoking", DMS, 2),
    EventType(34, "Drowsiness", DMS, 3),
    EventType(35, "Yawning", DMS, 3),
    EventType(36, "Seatbelt", DMS, 2),
    EventType(37, "Camera Covered", DMS, 1),
    EventType(41, "Speed Camera Violation", TRAFFIC, 2),
    EventType(42, "Rolling Stop", TRAFFIC, 3),
    EventType(43, "Speeding", TRAFFIC, 5),
    EventType(44, "Stop Sign", TRAFFIC, 2),
)
CLIP_EVENT_TYPE = EventType(CLIP_TYPE, "Video Clip", None, 0)
TYPES_BY_CODE: dict[int, EventType] = {t.code: t for t in (*EVENT_TYPES, CLIP_EVENT_TYPE)}
_TYPE_WEIGHTS = [t.weight for t in EVENT_TYPES]

# Cameras by model; `ALL` in a videoClip request means this whole tuple.
_MODELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("K145", ("C_F",)),
    ("K165", ("C_F", "C_I")),
    ("K220", ("C_F", "C_I")),
    ("K245", ("C_F", "C_I")),
    ("K265", ("C_F", "C_I", "C_E")),
)
CAMERA_IDS = frozenset({"C_F", "C_I", "C_R", "C_E", "GRID", "S_F_I"})

# fmt: off
_FIRST = (
    "Ava", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jun",
    "Kofi", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tomas",
)
_LAST = (
    "Alvarez", "Brooks", "Chang", "Dubois", "Evans", "Fischer", "Garcia", "Huang",
    "Ito", "Jensen", "Kim", "Lopez", "Moreau", "Novak", "Okafor", "Patel",
)
# fmt: on
# Depots the fleet drives around (lat, lng): Taipei, Rotterdam, Dallas.
_DEPOTS = ((25.0478, 121.5319), (51.9244, 4.4777), (32.7767, -96.7970))
_SEVERITY_WEIGHTS = (0.6, 0.3, 0.1)  # Minor, Moderate, Severe
SEVERITY_WORDS = {0: "Unknown", 1: "Minor", 2: "Moderate", 3: "Severe"}


def new_uuid(rng: random.Random) -> str:
    """A version-4 UUID drawn from `rng` (so it repeats for a seed)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True, slots=True)
class Device:
    index: int
    device_cid: str
    serial_number: str
    model: str
    cameras: tuple[str, ...]
    car_id: int
    vehicle_name: str
    driver_id: int
    driver_name: str
    lat: float  # home depot: events scatter around it
    lng: float

    def trip_id(self, timestamp: int) -> int:
        """One trip per device per hour: unique across devices, stable for a timestamp."""
        return (self.index + 1) * 1_000_000 + (timestamp // 3600) % 1_000_000


def make_devices(rng: random.Random, count: int) -> list[Device]:
    """`count` devices, each with a vehicle, a driver and a home depot."""
    devices = []
    for i in range(count):
        model, cameras = _MODELS[rng.randrange(len(_MODELS))]
        lat, lng = _DEPOTS[rng.randrange(len(_DEPOTS))]
        devices.append(
            Device(
                index=i,
                device_cid=new_uuid(rng),
                serial_number=f"{model}{rng.randrange(10**8):08d}",
                model=model,
                cameras=cameras,
                car_id=1001 + i,
                vehicle_name=f"TRUCK-{i + 1:03d}",
                driver_id=5001 + i,
                driver_name=f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
                lat=lat + rng.uniform(-0.05, 0.05),
                lng=lng + rng.uniform(-0.05, 0.05),
            )
        )
    return devices


@dataclass(eq=False, slots=True)
class Event:
    """One vendor event: its list `item` (served as is) plus what the simulator tracks."""

    seq: int  # insertion order: the stable tie-break of the sort
    device: Device
    item: dict[str, Any]
    arrived_at: float  # when it became (or becomes) visible in lists
    media_ready_at: float | None = None  # when pending video turns available
    cameras: tuple[str, ...] = ()  # cameras that have (or will have) a video
    video_duration: int = 20
    speed: float = 0.0
    discarded: bool = False
    sort_key: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.sort_key = (self.item["timestamp"], self.seq)

    @property
    def ticket(self) -> str:
        return str(self.item["ticket"])

    @property
    def timestamp(self) -> int:
        return int(self.item["timestamp"])

    @property
    def type_code(self) -> int:
        return int(self.item["type"])

    @property
    def has_video(self) -> bool:
        return bool(self.item["asset_info"]["has_video"])

    def retime(self, timestamp: int) -> None:
        """Change the timestamp (only before the event is inserted into the log)."""
        self.item["timestamp"] = timestamp
        self.item["expiry"] = timestamp + MEDIA_TTL_S
        self.item["trip_id"] = self.device.trip_id(timestamp)
        self.sort_key = (timestamp, self.seq)

    def settle_media(self) -> None:
        """The pending upload finished: every camera's video is downloadable."""
        self.media_ready_at = None
        total = self.item["videos_total_count"]
        self.item["asset_info"] = {"uploading": False, "has_video": total > 0}
        self.item["videos_count"] = total
        self.item["video_uploaded"] = 1 if total else 0
        self.item["upload_status"] = 2 if total else 0


def pick_type(rng: random.Random) -> EventType:
    """A random event type, weighted like a real fleet's traffic."""
    return rng.choices(EVENT_TYPES, weights=_TYPE_WEIGHTS)[0]


def make_event(
    rng: random.Random,
    *,
    seq: int,
    device: Device,
    etype: EventType,
    timestamp: int,
    arrived_at: float,
    video: bool,
    media_delay: float,
) -> Event:
    """A vendor list item with every documented field; media pending if `video`."""
    cameras = device.cameras if video else ()
    lat = round(device.lat + rng.uniform(-0.08, 0.08), 6)
    lng = round(device.lng + rng.uniform(-0.08, 0.08), 6)
    severity = rng.choices((1, 2, 3), weights=_SEVERITY_WEIGHTS)[0]
    item: dict[str, Any] = {
        "asset_info": {"uploading": bool(cameras), "has_video": False},
        "car_id": device.car_id,
        "clicked_count": 0,
        "device_cid": device.device_cid,
        "driver_avatar": "",
        "driver_id": device.driver_id,
        "driver_name": device.driver_name,
        "driver_status": 1,
        "expired": False,
        "expiry": timestamp + MEDIA_TTL_S,
        "is_new": True,
        "lat": lat,
        "lng": lng,
        "name": etype.name,
        "recording_id": rng.randrange(1, 2**31),
        "severity_level": severity,
        "tag": 0,
        "ticket": new_uuid(rng),
        "ticket_linked": "",
        "timestamp": timestamp,
        "trip_id": device.trip_id(timestamp),
        "type": etype.code,
        "type_name": etype.name,
        "upload_status": 1 if cameras else 0,
        "uuid": new_uuid(rng),
        "video_uploaded": 0,
        "videos_count": 0,
        "videos_total_count": len(cameras),
    }
    event = Event(
        seq=seq,
        device=device,
        item=item,
        arrived_at=arrived_at,
        media_ready_at=arrived_at + media_delay if cameras else None,
        cameras=cameras,
        speed=round(rng.uniform(0.0, 110.0), 1),
    )
    return event
