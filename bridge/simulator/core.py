"""The `Simulator`: all of its state, the lazy clock-driven world, and the test hooks.

Nothing runs in the background to create events: every request first calls
`refresh()`, which brings the world up to the simulator clock (new events, late
arrivals, media that became available, clip tasks that finished). The live event
stream draws from its own seeded RNG in arrival order, so it is the same for a
seed however requests happen to be spaced.
"""

from __future__ import annotations

import hmac
import random
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.clock import Clock, SystemClock
from bridge.simulator import push
from bridge.simulator.config import FAULT_KINDS, SimulatorConfig
from bridge.simulator.data import (
    CAMERA_IDS,
    CLIP_EVENT_TYPE,
    TYPES_BY_CODE,
    Device,
    Event,
    EventType,
    make_devices,
    make_event,
    new_uuid,
    pick_type,
)
from bridge.simulator.eventlog import EventLog
from bridge.simulator.tasks import CAMERA_CODES, ClipTask

if TYPE_CHECKING:
    from aiohttp import web

_BACKLOG_SPAN_S = 86_400
_LATE_S = (60.0, 600.0)  # how far in the past a late event's timestamp lies
_MAX_RECORDED = 100_000  # recorded requests kept; older ones dropped in bulk
_ALL_CAMERA_ORDER = ("C_F", "C_I", "C_R", "C_E", "GRID", "S_F_I")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the simulator saw (tests assert on these)."""

    method: str
    path: str
    query: dict[str, str]
    time: float


class Simulator:
    """The simulated VisionMax fleet portal; `app()` serves it over HTTP."""

    FLEETS: tuple[dict[str, Any], ...] = (
        {"depth": 0, "id": 101, "name": "Simulated Fleet"},
        {"depth": 1, "id": 102, "name": "Simulated Fleet / North"},
    )

    def __init__(self, config: SimulatorConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        # base_time shifts the simulator's wall clock; it still runs at the clock's pace.
        self._offset = 0.0 if config.base_time is None else config.base_time - self.clock.now()
        self.start_time = self.now()
        seed = config.seed if config.seed is not None else random.SystemRandom().getrandbits(64)
        # Independent streams, so that e.g. the number of requests (uq, faults) never
        # changes which events get generated.
        self._data_rng = random.Random(f"{seed}:data")
        self._aux_rng = random.Random(f"{seed}:aux")
        self._uq_rng = random.Random(f"{seed}:uq")
        self._fault_rng = random.Random(f"{seed}:faults")
        self._media_key = f"{seed}:media".encode()
        self._signings = 0
        # GetVideoDetail calls per ticket (those failed by a queued fault are in
        # `requests` only); tickets whose GetVideoDetail fails until removed from the set.
        self.video_detail_calls: Counter[str] = Counter()
        self.failing_video_details: set[str] = set()
        # Requests being answered now, and the most at once, by path (a client's
        # concurrency bound is visible here; a "slow" fault keeps a request open).
        self.in_flight: Counter[str] = Counter()
        self.peak_in_flight: Counter[str] = Counter()

        self.devices: list[Device] = make_devices(self._data_rng, config.devices)
        self._device_by_id = {d.device_cid: d for d in self.devices}
        self._device_by_id.update({d.serial_number: d for d in self.devices})
        self._log = EventLog()
        self._seq = 0
        self.tasks: dict[str, ClipTask] = {}
        self._active_tasks: list[ClipTask] = []
        self._tokens: set[str] = {config.token}
        self._fault_queue: deque[tuple[str, str | None]] = deque()
        self._clip_failures: deque[tuple[str, str | None]] = deque()
        self.requests: list[RecordedRequest] = []
        # Only filled when pushing, so a simulator without push_url holds no backlog.
        self.outbox: deque[dict[str, Any]] | None = (
            deque(maxlen=10_000) if config.push_url else None
        )

        self._load_backlog(config.backlog)
        self._next_arrival = (
            self.start_time + self._data_rng.expovariate(config.rate) if config.rate > 0 else None
        )

    # ---- time and the lazy world -------------------------------------------------

    def now(self) -> float:
        """The simulator's wall time (Unix seconds)."""
        return self.clock.now() + self._offset

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _load_backlog(self, count: int) -> None:
        rng = self._data_rng
        start = int(self.start_time)
        stamps = sorted(start - rng.randrange(1, _BACKLOG_SPAN_S + 1) for _ in range(count))
        low, high = self.config.media_delay_s
        events = []
        for ts in stamps:
            event = make_event(
                rng,
                seq=self._next_seq(),
                device=rng.choice(self.devices),
                etype=pick_type(rng),
                timestamp=ts,
                arrived_at=ts,
                video=rng.random() < self.config.video_share,
                media_delay=rng.uniform(low, high),
            )
            event.settle_media()  # old events: their uploads finished long ago
            events.append(event)
        self._log.load(events)

    def refresh(self) -> None:
        """Bring the world up to `now()`: arrivals, media, finished clip tasks."""
        now = self.now()
        self._generate_until(now)
        self._log.settle_media(now, self._media_ready)
        if self._active_tasks:
            self._advance_tasks(now)

    def _generate_until(self, now: float) -> None:
        cfg = self.config
        rng = self._data_rng
        low, high = cfg.media_delay_s
        while self._next_arrival is not None and self._next_arrival <= now:
            arrival = self._next_arrival
            device = rng.choice(self.devices)
            etype = pick_type(rng)
            late = rng.random() < cfg.late_share
            lateness = rng.uniform(*_LATE_S)
            timestamp = int(arrival - lateness) if late else int(arrival)
            event = make_event(
                rng,
                seq=self._next_seq(),
                device=device,
                etype=etype,
                timestamp=timestamp,
                arrived_at=arrival,
                video=rng.random() < cfg.video_share,
                media_delay=rng.uniform(low, high),
            )
            self._publish(event)
            self._next_arrival = arrival + rng.expovariate(cfg.rate)

    def _publish(self, event: Event) -> None:
        self._log.add(event)
        if self.outbox is not None:
            self.outbox.append(push.event_triggered(self, event))

    def _media_ready(self, event: Event) -> None:
        if self.outbox is not None:
            self.outbox.append(push.asset_uploaded(self, event))

    def _advance_tasks(self, now: float) -> None:
        still_active = []
        for task in self._active_tasks:
            if self.outbox is not None and task.state_at(now) != task.reported_state:
                task.reported_state = task.state_at(now)
                self.outbox.append(push.task_update(self, task, now))
            if task.terminal_at <= now:
                self._finish_task(task)
            else:
                still_active.append(task)
        self._active_tasks = still_active

    def _finish_task(self, task: ClipTask) -> None:
        """A clip task reached its end: on (partial) success its upload is an event."""
        task.finalized = True
        cameras = task.ok_cameras
        if not cameras:
            return
        rng = self._aux_rng
        event = make_event(
            rng,
            seq=self._next_seq(),
            device=task.device,
            etype=CLIP_EVENT_TYPE,
            timestamp=task.target_timestamp,
            arrived_at=task.terminal_at,
            video=True,
            media_delay=0.0,
        )
        event.cameras = cameras
        event.video_duration = task.duration
        event.item["videos_total_count"] = len(cameras)
        event.item["lat"], event.item["lng"] = task.lat, task.lng
        event.item["name"] = task.file_name
        event.settle_media()
        task.ticket = event.ticket
        task.video_id = rng.randrange(1, 2**31)
        self._publish(event)

    # ---- lookups used by the handlers --------------------------------------------

    @property
    def log(self) -> EventLog:
        return self._log

    def device(self, sn_or_cid: str) -> Device | None:
        return self._device_by_id.get(sn_or_cid)

    def new_uq(self) -> str:
        return new_uuid(self._uq_rng)

    def token_valid(self, token: str) -> bool:
        return token in self._tokens

    def login(self) -> str:
        """A successful `POST /V2/auth`: the configured token works (again)."""
        self._tokens.add(self.config.token)
        return self.config.token

    def switch_token(self, old: str, fleet_id: int) -> str:
        """`token-switch`: a fleet-scoped token replaces the one used to ask."""
        new = f"{self.config.token}-f{fleet_id}"
        self._tokens.discard(old)
        self._tokens.add(new)
        return new

    def next_fault(self, path: str) -> str | None:
        """The fault for this request: the first queued one that matches, else a draw."""
        for i, (kind, prefix) in enumerate(self._fault_queue):
            if prefix is None or path.startswith(prefix):
                del self._fault_queue[i]
                return kind
        rates = self.config.faults.rates
        if not rates:
            return None
        draw = self._fault_rng.random()
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += rates.get(kind, 0.0)
            if draw < edge:
                return kind
        return None

    def sign_media(self, ticket: str, cams: Sequence[str], expires: int) -> list[str]:
        """Pre-signed download URL signatures, one per camera, new on every call.

        The vendor re-signs its media URLs each time it is asked, so a client must
        never take a new URL for the same camera as a change.
        """
        self._signings += 1
        # surrogatepass: tests give cameras poisoned names, which must not crash the answer.
        return [
            hmac.new(
                self._media_key,
                f"{ticket}/{cam}/{expires}/{self._signings}".encode("utf-8", "surrogatepass"),
                "sha256",
            ).hexdigest()[:32]
            for cam in cams
        ]

    def record(self, method: str, path: str, query: dict[str, str]) -> None:
        if len(self.requests) >= _MAX_RECORDED:
            # A long-running `simulate` must not grow without bound; tests never get here.
            del self.requests[: _MAX_RECORDED // 2]
        self.requests.append(RecordedRequest(method, path, query, self.now()))

    def create_task(
        self,
        device: Device,
        *,
        cam_id: str,
        file_name: str,
        target_timestamp: int,
        duration: int,
        single_event: bool,
    ) -> ClipTask:
        """Start a videoClip task on `device` (validation is the handler's job)."""
        cameras = device.cameras if cam_id == "ALL" else (cam_id,)
        failures = {c: "D_E20001" for c in cameras if c not in device.cameras}
        if self._clip_failures:
            code, only_cam = self._clip_failures.popleft()
            if only_cam is not None and only_cam in cameras:
                failures[only_cam] = code
            else:
                failures.update(dict.fromkeys(cameras, code))
        rng = self._aux_rng
        task = ClipTask(
            task_id=new_uuid(rng),
            device=device,
            cam_id=cam_id,
            cameras=cameras,
            file_name=file_name,
            target_timestamp=target_timestamp,
            duration=duration,
            single_event=single_event,
            created_at=self.now(),
            step_s=self.config.clip_step_s,
            lat=round(device.lat + rng.uniform(-0.08, 0.08), 6),
            lng=round(device.lng + rng.uniform(-0.08, 0.08), 6),
            failures=failures,
        )
        self.tasks[task.task_id] = task
        self._active_tasks.append(task)
        self.refresh()  # a zero clip_step_s finishes at once
        return task

    # ---- public API and test hooks -------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving this simulator."""
        from bridge.simulator.app import build_app

        return build_app(self)

    @property
    def events(self) -> list[Event]:
        """Every visible event (arrived, not discarded), oldest timestamp first."""
        self.refresh()
        return self._log.events

    def item(self, ticket: str) -> dict[str, Any] | None:
        """The vendor list item of a visible event, or None."""
        self.refresh()
        event = self._log.get(ticket)
        return None if event is None else event.item

    def add_event(self, **overrides: Any) -> dict[str, Any]:
        """Insert one event arriving now; returns its vendor item.

        Special keys: `type` (code; sets `type_name`/`name` from the table), `device_cid`
        or `serial_number` (pick the device), `video` (bool: media will arrive),
        `media_delay_s` (when; 0 = at once). Any other key overwrites the item field
        (`asset_info` is merged).
        """
        self.refresh()
        rng = self._aux_rng
        now = self.now()
        device = self._pick_device(overrides)
        etype = self._event_type(overrides)
        video = bool(overrides.pop("video", rng.random() < self.config.video_share))
        delay = float(overrides.pop("media_delay_s", rng.uniform(*self.config.media_delay_s)))
        timestamp = int(overrides.pop("timestamp", now))
        event = make_event(
            rng,
            seq=self._next_seq(),
            device=device,
            etype=etype,
            timestamp=timestamp,
            arrived_at=now,
            video=video,
            media_delay=delay,
        )
        if video and delay <= 0:
            event.settle_media()
        for key, value in overrides.items():
            if key == "asset_info":
                event.item["asset_info"] = {**event.item["asset_info"], **value}
            else:
                event.item[key] = value
        self._publish(event)
        return event.item

    def _pick_device(self, overrides: dict[str, Any]) -> Device:
        for key in ("device_cid", "serial_number"):
            if key in overrides:
                wanted = str(overrides.pop(key))
                device = self._device_by_id.get(wanted)
                if device is None:
                    raise ValueError(f"{key}: no simulated device {wanted!r}")
                return device
        return self._aux_rng.choice(self.devices)

    def _event_type(self, overrides: dict[str, Any]) -> EventType:
        code = int(overrides.pop("type", 0)) or None
        if code is None:
            return pick_type(self._aux_rng)
        known = TYPES_BY_CODE.get(code)
        if known is not None and "type_name" not in overrides:
            return known
        name = str(overrides.pop("type_name", f"Type {code}"))
        return EventType(code, name, known.category if known else None, 0)

    def set_media(self, ticket: str, **fields: Any) -> None:
        """Change an event's media state, e.g. `has_video=True, videos_count=2`.

        `has_video=True` without `videos_count` makes every expected video available.
        The event's own media schedule is cancelled: the test is in charge now.
        """
        self.refresh()
        event = self._log.get(ticket)
        if event is None:
            raise KeyError(ticket)
        item = event.item
        event.media_ready_at = None
        asset = dict(item["asset_info"])
        was_available = bool(asset["has_video"])
        for key, value in fields.items():
            if key in ("has_video", "uploading"):
                asset[key] = bool(value)
            elif key in item:
                item[key] = value
            else:
                raise ValueError(f"set_media: unknown field {key!r}")
        item["asset_info"] = asset
        if asset["has_video"]:
            if "videos_count" not in fields:
                item["videos_count"] = max(1, item["videos_total_count"])
            count = int(item["videos_count"])
            item["videos_total_count"] = max(count, int(item["videos_total_count"]))
            cams = event.cameras or event.device.cameras
            extra = [c for c in _ALL_CAMERA_ORDER if c not in cams]
            event.cameras = (*cams, *extra)[: max(count, len(event.cameras))]
            if "video_uploaded" not in fields:
                item["video_uploaded"] = 1
            if not was_available:
                self._media_ready(event)

    def queue_faults(self, *kinds: str, path_prefix: str | None = None) -> None:
        """The next requests (whose path starts with `path_prefix`) get these faults."""
        for kind in kinds:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
            self._fault_queue.append((kind, path_prefix))

    def revoke_token(self) -> None:
        """Every current token stops working until the next successful `POST /V2/auth`."""
        self._tokens.clear()

    def fail_next_clips(self, code: str, count: int = 1, *, cam_id: str | None = None) -> None:
        """The next `count` videoClip tasks fail with camera `code`.

        With `cam_id`, only that camera fails: a task with other cameras (cam_id=ALL)
        ends in Partial Success instead of Failed.
        """
        if code not in CAMERA_CODES:
            raise ValueError(f"unknown camera code {code!r} (known: {', '.join(CAMERA_CODES)})")
        if cam_id is not None and cam_id not in CAMERA_IDS:
            raise ValueError(f"unknown camera id {cam_id!r}")
        self._clip_failures.extend([(code, cam_id)] * count)
