"""Clip tasks (SPEC §5.2): request a videoClip, track it to its end, notify each step.

A tracked clip is keyed state in the store (kind `clip`, key task id), written in
the SAME transaction as the notification it causes, so a crash never loses a step
and never notifies one twice; tracking resumes from the store after a restart.

Life of a clip::

    request ──▶ clip.requested ──check (backoff)──▶ clip.updated … ──▶ clip.completed
                                      │                                (video URLs)
                                      └── terminal failure / give_up_after_s ──▶ clip.failed

`auto_request` rules ask for clips for freshly stored `event.created` notifications,
at most once per ticket (kind `auto_clip`, key ticket).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
)

from bridge.clock import Clock, parse_rfc3339, utc_iso
from bridge.ingest import SeenOnce
from bridge.metrics import Metrics
from bridge.normalize import CLIP_TERMINAL_STATES, clip_data, clip_type
from bridge.notifications import Notification, build_notification, notification_from_envelope
from bridge.routing import SEVERITY_ORDER, route
from bridge.settings import CAMERA_IDS, ClipRule, Settings
from bridge.store.base import (
    IngestTx,
    NewNotification,
    Store,
    StoreRejected,
    StoreUnavailable,
    is_outage,
)
from bridge.upstream.client import UpstreamClient
from bridge.upstream.errors import UpstreamApiError, UpstreamError
from bridge.vendor_ids import is_file_name, is_serial

log = structlog.get_logger(__name__)

CLIP_KIND: Final = "clip"
CLIP_JOB: Final = "clips"  # the metrics label of the tracking job
AUTO_KIND: Final = "auto_clip"
# Events matching an auto_request rule, stored in their ingest transaction.
CANDIDATE_KIND: Final = "auto_clip_candidate"
AUTO_QUEUE_MAX: Final = 1000
"""Auto-request candidates held in memory; past it they wait in the store (re-read later)."""

FIRST_CHECK_S: Final = 5.0
MAX_CHECK_S: Final = 300.0
GIVE_UP_CODE: Final = "D_E20010"
"""The device drops a queued upload after 3 days ("Upload time expired"): the code a
clip that outlived `give_up_after_s` ends with (the schema admits only `D_E…` codes)."""


def check_delay(checks: int) -> float:
    """Backoff between two taskResult checks: 5 s, 10 s, 20 s … at most 5 min."""
    return float(min(MAX_CHECK_S, FIRST_CHECK_S * 2 ** min(checks, 16)))


# --------------------------------------------------------------------------- requests


def parse_target_timestamp(value: int | str) -> int:
    """Unix seconds, or an RFC 3339 string with a zone, → Unix seconds."""
    if isinstance(value, int):
        if not 0 < value < 2**31:
            raise ValueError("Unix seconds out of range")
        return value
    ts = int(parse_rfc3339(value).timestamp())
    if not 0 < ts < 2**31:
        raise ValueError("time out of range")
    return ts


class ClipRequest(BaseModel):
    """The body of `POST /api/v1/clips`; validated before anything reaches the vendor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    serial_number: str = Field(min_length=1, max_length=128)
    cam_id: str
    target_timestamp: StrictInt | str
    duration_s: StrictInt = Field(30, ge=1, le=86400)
    file_name: str = Field(min_length=1, max_length=255)
    single_event: StrictBool = True

    @field_validator("serial_number")
    @classmethod
    def _serial(cls, v: str) -> str:
        if not is_serial(v):
            raise ValueError("expected a serial number (letters and digits) or a device CID (UUID)")
        return v

    @field_validator("cam_id")
    @classmethod
    def _cam(cls, v: str) -> str:
        if v not in CAMERA_IDS:
            raise ValueError(f"unknown camera id; use one of {', '.join(CAMERA_IDS)}")
        return v

    @field_validator("file_name")
    @classmethod
    def _file_name(cls, v: str) -> str:
        # Stricter than the vendor's own list (../ " ' & / \\ ? # :): no control,
        # bidi or other characters a device or a download page may mishandle.
        if not is_file_name(v):
            raise ValueError("use letters, digits, _ - ( ) and single spaces or dots between them")
        return v

    @field_validator("target_timestamp")
    @classmethod
    def _target(cls, v: int | str) -> int:
        return parse_target_timestamp(v)

    @property
    def target_unix(self) -> int:
        """`target_timestamp` as Unix seconds (the validator already converted it)."""
        return int(self.target_timestamp)


# --------------------------------------------------------------------------- records


def _camera_states(data: Mapping[str, Any]) -> dict[str, int | None]:
    return {
        str(c.get("cam_id")): c.get("state_number")
        for c in data.get("cameras") or []
        if isinstance(c, Mapping)
    }


def really_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """A task state change, or a camera present in both whose `state_number` moved.

    A camera appearing for the first time is not a change on its own.
    """
    if old.get("state_code") != new.get("state_code"):
        return True
    before, after = _camera_states(old), _camera_states(new)
    return any(before[cam] != after[cam] for cam in before.keys() & after.keys())


def clip_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The tracked clip as the API shows it: the latest `data` plus tracking fields."""
    next_at = record.get("next_check_at")
    return {
        **record["data"],
        "done": bool(record.get("done")),
        "source": record.get("source", "api"),
        "event_ticket": record.get("event_ticket"),
        "requested_at": utc_iso(record["requested_at"]),
        "updated_at": utc_iso(record.get("updated_at", record["requested_at"])),
        "next_check_at": None if next_at is None or record.get("done") else utc_iso(next_at),
    }


@dataclass
class _TaskLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class TrackStats:
    """What one tracking run did."""

    checked: int = 0
    notified: int = 0
    finished: int = 0
    errors: int = 0


def tracked_clip_data(
    record: Mapping[str, Any],
    task: Mapping[str, Any],
    *,
    videos: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """`data` of `clip.*` from a tracked clip's record and its latest taskResult."""
    return clip_data(
        task,
        serial_number=record["serial_number"],
        cam_id=record["cam_id"],
        file_name=record["file_name"],
        target_timestamp=int(record["target_timestamp"]),
        duration_s=int(record["duration_s"]),
        videos=videos,
    ) | {"task_id": record["task_id"]}


def rule_for(rules: Sequence[ClipRule], n: Notification) -> ClipRule | None:
    """The first `auto_request` rule an `event.created` notification matches."""
    if n.type != "event.created":
        return None
    keys = n.keys
    for rule in rules:
        m = rule.match
        if m.min_severity is not None and SEVERITY_ORDER.get(
            keys.severity or "unknown", 0
        ) < SEVERITY_ORDER.get(m.min_severity, 0):
            continue
        if m.categories and keys.category not in m.categories:
            continue
        if m.event_types and keys.event_code not in m.event_types:
            continue
        return rule
    return None


# --------------------------------------------------------------------------- tracker


class ClipTracker:
    """Requests clips and tracks their tasks; owns the `clip` and `auto_clip` state."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: UpstreamClient,
        clock: Clock,
        metrics: Metrics,
        *,
        auto_queue_max: int = AUTO_QUEUE_MAX,
    ) -> None:
        self._settings = settings
        self._store = store
        self._client = client
        self._clock = clock
        self._metrics = metrics
        self._base_url = settings.upstream.base
        self._give_up_s = settings.poll.clips.give_up_after_s
        self._rules = settings.clips.auto_request
        # One lock per task being checked, dropped when its last user leaves.
        self._locks: dict[str, _TaskLock] = {}
        self._auto: asyncio.Queue[Notification] = asyncio.Queue(auto_queue_max)
        self._auto_overflow = False  # candidates left in the store: re-read when drained
        self._failed_tasks = SeenOnce()  # tasks whose check failed: logged once
        self._auto_worker: asyncio.Task[None] | None = None

    # -- requests --------------------------------------------------------------------

    async def request(
        self, req: ClipRequest, *, source: str = "api", event_ticket: str | None = None
    ) -> dict[str, Any]:
        """Ask the device for a clip, then store the task and `clip.requested` at once."""
        task_id = await self._client.request_clip(
            req.serial_number,
            cam_id=req.cam_id,
            file_name=req.file_name,
            target_timestamp=req.target_unix,
            duration_s=req.duration_s,
            single_event=req.single_event,
        )
        now = self._clock.now()
        record: dict[str, Any] = {
            "task_id": task_id,
            "serial_number": req.serial_number,
            "cam_id": req.cam_id,
            "file_name": req.file_name,
            "target_timestamp": req.target_unix,
            "duration_s": req.duration_s,
            "single_event": req.single_event,
            "source": source,
            "event_ticket": event_ticket,
            "requested_at": now,
            "updated_at": now,
            "checks": 0,
            "next_check_at": now + check_delay(0),
            "done": False,
        }
        record["data"] = tracked_clip_data(record, {"task_id": task_id})
        n = self._notification("clip.requested", record["data"], now)

        async def work(tx: IngestTx) -> None:
            await tx.put_json(CLIP_KIND, task_id, record)
            if event_ticket is not None:
                await tx.put_json(
                    AUTO_KIND, event_ticket, {"task_id": task_id, "requested_at": now}
                )
            await tx.add_notifications([NewNotification(n, route(self._settings.targets, n))])

        await self._store.ingest(work)
        self._metrics.notifications.labels(type=n.type).inc()
        log.info("clip requested", task_id=task_id, cam_id=req.cam_id, source=source)
        return record

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """A tracked clip's record, or None."""
        return await self._store.get_json(CLIP_KIND, task_id)

    # -- tracking --------------------------------------------------------------------

    async def run_once(self) -> TrackStats:
        """The tracking job: check every open clip whose next check is due."""
        stats = TrackStats()
        now = self._clock.now()
        for task_id, record in await self._store.list_json(CLIP_KIND):
            if record.get("done") or float(record.get("next_check_at") or 0) > now:
                continue
            await self._check_isolated(task_id, stats)
        if stats.checked:
            log.info(
                "clip tracking run",
                checked=stats.checked,
                notified=stats.notified,
                finished=stats.finished,
                errors=stats.errors,
            )
        return stats

    async def check_now(self, task_id: str) -> bool:
        """Re-check one tracked clip at once (a TASK_UPDATE push); False if unknown/done."""
        record = await self.get(task_id)
        if record is None or record.get("done"):
            return False
        await self._check_isolated(task_id, TrackStats())
        return True

    async def _check_isolated(self, task_id: str, stats: TrackStats) -> None:
        """Check one task; a task that cannot be handled is logged once, counted and
        rescheduled with backoff, and never stops the other tasks."""
        try:
            await self._check(task_id, stats)
        except Exception as err:
            if is_outage(err):
                raise  # the store is down: the whole run fails and is retried
            stats.errors += 1
            self._metrics.items_malformed.labels(job=CLIP_JOB).inc()
            if self._failed_tasks.first_time(task_id):
                log.warning("clip task skipped", task_id=task_id, error=type(err).__name__)
            with contextlib.suppress(StoreRejected):
                await self._reschedule(task_id, self._clock.now())
            return

    async def _check(self, task_id: str, stats: TrackStats) -> None:
        entry = self._locks.get(task_id)
        if entry is None:
            entry = self._locks[task_id] = _TaskLock()
        entry.users += 1
        try:
            # One check of a task at a time (the job and a TASK_UPDATE push may race),
            # so an older taskResult is never applied after a newer one.
            async with entry.lock:
                await self._check_locked(task_id, stats)
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[task_id]

    async def _check_locked(self, task_id: str, stats: TrackStats) -> None:
        record = await self.get(task_id)
        if record is None or record.get("done"):
            return
        stats.checked += 1
        now = self._clock.now()
        overdue = now - float(record["requested_at"]) > self._give_up_s
        try:
            task = await self._client.task_result(task_id)
        except UpstreamError as err:
            stats.errors += 1
            if not overdue:
                log.warning("clip check failed", task_id=task_id, **err.log_fields())
                await self._reschedule(task_id, now)
                return
            task = {"task_id": task_id, "task_state": record["data"].get("state_code")}
        data = tracked_clip_data(record, task)
        state_code = data["state_code"]
        type_: str | None = None
        if state_code in CLIP_TERMINAL_STATES:
            type_ = clip_type(state_code)
            if type_ == "clip.completed" and data["ticket"]:
                try:
                    detail = await self._client.video_detail(data["ticket"])
                except UpstreamError as err:
                    if not overdue:
                        # Completed, but its URLs are not readable yet: look again soon
                        # rather than notify completion without them.
                        log.warning("clip videos unavailable", task_id=task_id, **err.log_fields())
                        await self._reschedule(task_id, now)
                        return
                    detail = {}
                data = tracked_clip_data(record, task, videos=detail.get("videos"))
        elif overdue:
            type_ = "clip.failed"
            data["error"] = {
                "code": GIVE_UP_CODE,
                "description": (
                    f"gave up: no terminal state {int(now - record['requested_at'])} s after "
                    f"the request (poll.clips.give_up_after_s = {int(self._give_up_s)})"
                ),
            }
        elif really_changed(record["data"], data):
            type_ = "clip.updated"
        await self._commit(task_id, data, type_, now, stats)

    async def _commit(
        self, task_id: str, data: dict[str, Any], type_: str | None, now: float, stats: TrackStats
    ) -> None:
        done = type_ in ("clip.completed", "clip.failed")
        notification = self._notification(type_, data, now) if type_ else None

        async def work(tx: IngestTx) -> None:
            current = await tx.get_json(CLIP_KIND, task_id)
            if current is None or current.get("done"):
                return
            checks = int(current.get("checks", 0)) + 1
            current.update(
                checks=checks,
                next_check_at=now + check_delay(checks),
                done=done,
            )
            if notification is not None:
                current.update(data=data, updated_at=now)
                await tx.add_notifications(
                    [NewNotification(notification, route(self._settings.targets, notification))]
                )
            else:
                # Keep cameras that appeared without a change, so later moves compare.
                current["data"] = {**current["data"], "cameras": data["cameras"]}
            await tx.put_json(CLIP_KIND, task_id, current)

        await self._store.ingest(work)
        if notification is not None:
            stats.notified += 1
            self._metrics.notifications.labels(type=notification.type).inc()
            log.info("clip state changed", task_id=task_id, type=type_, state=data["state"])
        if done:
            stats.finished += 1

    async def _reschedule(self, task_id: str, now: float) -> None:
        async def work(tx: IngestTx) -> None:
            current = await tx.get_json(CLIP_KIND, task_id)
            if current is None or current.get("done"):
                return
            checks = int(current.get("checks", 0)) + 1
            current.update(checks=checks, next_check_at=now + check_delay(checks))
            await tx.put_json(CLIP_KIND, task_id, current)

        await self._store.ingest(work)

    def _notification(self, type_: str, data: dict[str, Any], now: float) -> Notification:
        return build_notification(type_, data, base_url=self._base_url, now=now)

    # -- auto_request ----------------------------------------------------------------

    @property
    def auto_enabled(self) -> bool:
        return bool(self._rules)

    def on_stored(self, notifications: list[Notification]) -> None:
        """`EventIngestor.on_stored`: queue `event.created` that match a rule (no I/O)."""
        for n in notifications:
            if rule_for(self._rules, n) is not None:
                self._queue_auto(n)

    def _queue_auto(self, n: Notification) -> bool:
        """Queue a candidate; when the queue is full it stays in the store for later."""
        try:
            self._auto.put_nowait(n)
        except asyncio.QueueFull:
            if not self._auto_overflow:
                log.warning(
                    "auto clip queue full; candidates wait in the store", max=self._auto.maxsize
                )
            self._auto_overflow = True
            return False
        return True

    async def record_candidates(self, tx: IngestTx, notifications: list[Notification]) -> None:
        """`EventIngestor.in_tx`: keep matching events durably with their notification, so
        a crash between storing an event and requesting its clip loses no auto clip."""
        for n in notifications:
            if n.keys.ticket and rule_for(self._rules, n) is not None:
                await tx.put_json(CANDIDATE_KIND, n.keys.ticket, n.envelope())

    async def requeue_candidates(self) -> int:
        """At start-up: queue stored candidates whose clip was never requested."""
        queued = 0
        for ticket, envelope in await self._store.list_json(CANDIDATE_KIND):
            if await self._store.get_json(AUTO_KIND, ticket) is not None:
                continue
            if not self._queue_auto(notification_from_envelope(envelope)):
                break
            queued += 1
        return queued

    def start(self) -> None:
        """Start the auto-request worker (owned by the app's clips cleanup context)."""
        if self._auto_worker is None:
            self._auto_worker = asyncio.create_task(self._auto_loop(), name="clips-auto")

    async def stop(self) -> None:
        """Finish queued auto-requests already taken, then stop the worker."""
        if self._auto_worker is not None:
            self._auto_worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._auto_worker
            self._auto_worker = None

    async def wait_auto_idle(self) -> None:
        """Wait until every queued auto-request candidate has been handled (tests)."""
        await self._auto.join()

    async def _auto_loop(self) -> None:
        while True:
            if self._auto_overflow and self._auto.empty():
                # Drained after an overflow: the candidates left out are in the store.
                self._auto_overflow = False
                try:
                    await self.requeue_candidates()
                except StoreUnavailable:
                    log.warning("auto clip candidates not re-read: the store is unavailable")
            n = await self._auto.get()
            try:
                await self.auto_request(n)
            except Exception:  # one bad candidate must not stop the worker
                log.exception("auto clip request crashed", ticket=n.keys.ticket)
            finally:
                self._auto.task_done()

    async def auto_request(self, n: Notification) -> dict[str, Any] | None:
        """Request the clip a rule calls for, once per ticket; None when not requested."""
        rule = rule_for(self._rules, n)
        ticket = n.keys.ticket
        if rule is None or not ticket:
            return None
        if await self._store.get_json(AUTO_KIND, ticket) is not None:
            return None
        device = n.data.get("device") or {}
        serial = device.get("serial_number") or device.get("cid")
        occurred = n.data.get("occurred_at")
        if not serial or not occurred:
            return None
        try:
            req = ClipRequest(
                serial_number=serial,
                cam_id=rule.cam_id,
                target_timestamp=occurred,
                duration_s=rule.duration_s,
                file_name=f"auto_{ticket}"[:255],
            )
        except ValidationError as err:
            # The vendor's own device id or ticket is not something we pass back to it.
            reason = err.errors()[0]
            where = ".".join(str(p) for p in reason["loc"])
            log.warning("auto clip not requested", ticket=ticket, field=where)
            failed: dict[str, Any] = {"task_id": None, "requested_at": self._clock.now()}
            failed["error"] = f"{where}: {reason['msg']}"
        else:
            try:
                return await self.request(req, source="auto", event_ticket=ticket)
            except UpstreamError as err:
                # Never retried blindly (a videoClip creates work): remember the attempt.
                log.warning("auto clip request failed", ticket=ticket, **err.log_fields())
                failed = {"task_id": None, "requested_at": self._clock.now(), "error": str(err)}
                if isinstance(err, UpstreamApiError):
                    failed["code"] = err.code

        async def work(tx: IngestTx) -> None:
            await tx.put_json(AUTO_KIND, ticket, failed)

        await self._store.ingest(work)
        return None
