"""The vendor's own push webhooks (SPEC §5.5): `POST {ingest.vendor_webhook.path}`.

The handler checks (token, size, shape), stores the raw push in the store (kv
kind `push`) and only then answers `200 {"status":"success"}`: a push answered 200
is never lost, even if the process dies right after answering. A worker task
drains the queue into the same pipeline as polling, forgetting each stored push in
the transaction that ingests it; pushes left by a process that died are queued
again at start-up and by a periodic sweep (on any replica):

- `EVENT_TRIGGERED` / `ASSET_UPLOADED` → `EventIngestor.ingest(..., normalizer=
  normalize_push_event)`: same de-dup by ticket, so push + poll notify once.
  Messages queued together are ingested in one transaction.
- `TASK_UPDATE` → the tracked clip is re-checked now, not at its next poll.
- any other hook is acknowledged and ignored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from typing import Any, Final

import structlog
from aiohttp import web
from pydantic import ValidationError

from bridge.aio import wait_at_most
from bridge.app import BRIDGE
from bridge.clips import ClipTracker
from bridge.httpguard import read_body, tokens_match
from bridge.ingest import EventIngestor
from bridge.normalize import MalformedItem, normalize_push_event
from bridge.settings import VendorWebhookIngest
from bridge.store.base import IngestTx, Store, StoreUnavailable
from bridge.upstream.models import VendorPush
from bridge.vendor_text import clean_json, loads_clean

log = structlog.get_logger(__name__)

MAX_PUSH_BYTES: Final = 1024 * 1024
MAX_QUEUED_BYTES: Final = 32 * 1024 * 1024
"""Push bodies waiting for the worker, by their size on the wire; past it: 503 + Retry-After.
Queued as the raw bytes (parsed again by the worker), so this is what they hold in memory."""
BATCH: Final = 200
EVENT_HOOKS: Final = frozenset({"EVENT_TRIGGERED", "ASSET_UPLOADED"})
TASK_HOOK: Final = "TASK_UPDATE"
_OK: Final = {"status": "success"}
PUSH_KIND: Final = "push"  # stored pushes not yet ingested: {"raw": base64 of the body}
SWEEP_INTERVAL_S: Final = 30.0  # look for pushes another process stored and never ingested
SWEEP_AGE_S: Final = 30.0  # … once they are this old (their own worker had its chance)

Queued = tuple[str, bytes]  # (stored key, raw body)


class PushRejected(Exception):
    """A push body we refuse: status and reason."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def parse_push(raw: bytes) -> tuple[str, dict[str, Any]]:
    """(hookName, decoded message) of a vendor push body; `PushRejected` when malformed."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # includes UnicodeDecodeError; nesting too deep
        raise PushRejected(400, "invalid_json", "body: not valid JSON") from None
    if not isinstance(body, dict):
        raise PushRejected(400, "invalid_body", "body: expected a JSON object")
    raw_message = body.get("message")
    # Vendor text is cleaned once: the envelope's fields here, `message` (JSON in a
    # string, often longer than one vendor string may be) once it is decoded.
    body = clean_json({k: v for k, v in body.items() if k != "message"})
    try:
        push = VendorPush.model_validate(body)
    except ValidationError as err:
        raise PushRejected(400, "invalid_body", f"body: {err.errors()[0]['msg']}") from None
    if not push.hookName:
        raise PushRejected(400, "invalid_body", "hookName: required")
    if isinstance(raw_message, dict):  # tolerate a vendor that stops double-encoding
        message: Any = clean_json(raw_message)
    elif isinstance(raw_message, str):
        try:
            message = loads_clean(raw_message)
        except (ValueError, RecursionError):
            raise PushRejected(400, "invalid_message", "message: not a JSON string") from None
    elif push.hookName in EVENT_HOOKS or push.hookName == TASK_HOOK:
        raise PushRejected(400, "invalid_message", "message: required (a JSON string)")
    else:
        message = {}
    if not isinstance(message, dict):
        raise PushRejected(400, "invalid_message", "message: expected a JSON object")
    return push.hookName, message


class PushIngest:
    """The push queue and its worker; owned by the app's push cleanup context."""

    def __init__(
        self,
        cfg: VendorWebhookIngest,
        ingestor: EventIngestor,
        clips: ClipTracker | None,
        store: Store,
        *,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        read_timeout_s: float = 15.0,
    ) -> None:
        self._cfg = cfg
        self._max_queued_bytes = max_queued_bytes
        self._read_timeout_s = read_timeout_s
        self._ingestor = ingestor
        self._clips = clips
        self._store = store
        # Raw bodies, bounded by their total size (`_queued_bytes`), not their count.
        self._queue: asyncio.Queue[Queued] = asyncio.Queue()
        self._queued: set[str] = set()  # keys queued or being ingested here
        self._queued_bytes = 0
        self._full = False  # logged once per full streak
        self._worker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self.processed = 0

    # -- HTTP --------------------------------------------------------------------

    def token_ok(self, request: web.Request) -> bool:
        """No token configured, or `?token=` / `X-Bridge-Token` carries it (constant time)."""
        if self._cfg.token is None:
            return True
        given = request.headers.get("X-Bridge-Token") or request.query.get("token")
        return tokens_match(given, self._cfg.token.get_secret_value())

    async def handle(self, request: web.Request) -> web.Response:
        """Check, queue, answer `{"status":"success"}`; raises only `BodyError`."""
        if not self.token_ok(request):
            log.warning("vendor push refused: wrong token", remote=request.remote)
            return _error(401, "unauthorized", "missing or wrong token")
        # Read the stream ourselves: the 1 MiB limit holds whatever server.max_body_bytes is.
        # Too large or too slow raises BodyError: guard_middleware answers 413 / 408.
        raw = await read_body(request, limit=MAX_PUSH_BYTES, timeout_s=self._read_timeout_s)
        try:
            hook, message = parse_push(raw)
            if hook in EVENT_HOOKS:
                normalize_push_event(message, self._ingestor.table)  # refuse what can't ingest
        except PushRejected as err:
            log.warning("vendor push refused", code=err.code, reason=err.message)
            return _error(err.status, err.code, err.message)
        except MalformedItem as err:
            log.warning("vendor push refused", code="malformed_message", reason=err.reason)
            return _error(400, "malformed_message", f"message: {err.reason}")
        if hook not in EVENT_HOOKS and hook != TASK_HOOK:
            return web.json_response(_OK)  # TRIP_*, GPS_UPDATE …: not ours
        if self._closing:
            return _error(503, "unavailable", "shutting down", retry_after="5")
        if self._queued_bytes + len(raw) > self._max_queued_bytes:
            if not self._full:
                self._full = True
                log.warning("vendor push queue full", max_bytes=self._max_queued_bytes)
            return _error(503, "unavailable", "push queue full", retry_after="5")
        if self._full:
            self._full = False
            log.info("vendor push queue accepting again")
        key = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"  # sorts by arrival
        try:
            await self._store_push(key, raw)
        except StoreUnavailable:
            # Not stored, so not accepted: the vendor retries later.
            return _error(503, "unavailable", "the store is not answering", retry_after="5")
        self._enqueue(key, raw)
        return web.json_response(_OK)

    async def _store_push(self, key: str, raw: bytes) -> None:
        async def work(tx: IngestTx) -> None:
            await tx.put_json(PUSH_KIND, key, {"raw": base64.b64encode(raw).decode("ascii")})

        await self._store.ingest(work)

    def _enqueue(self, key: str, raw: bytes) -> bool:
        if key in self._queued:
            return False
        self._queued.add(key)
        self._queued_bytes += len(raw)
        self._queue.put_nowait((key, raw))
        return True

    async def recover(self, min_age_s: float = 0.0) -> int:
        """Queue stored pushes not yet ingested (older than `min_age_s`); returns how many."""
        cutoff = time.time_ns() - int(min_age_s * 1e9)
        queued = 0
        for key, value in await self._store.list_json(PUSH_KIND):
            born = key.split("-", 1)[0]
            if born.isdigit() and int(born) > cutoff:
                continue
            if self._queued_bytes >= self._max_queued_bytes:
                break  # the next sweep takes the rest
            try:
                raw = base64.b64decode(str(value.get("raw", "")), validate=True)
            except ValueError:
                continue
            queued += self._enqueue(key, raw)
        return queued

    @property
    def queued_bytes(self) -> int:
        """Bytes of push bodies waiting for the worker."""
        return self._queued_bytes

    # -- worker ------------------------------------------------------------------

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="vendor-push")
        self._sweeper = asyncio.create_task(self._sweep(), name="vendor-push-sweep")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                found = await self.recover(min_age_s=SWEEP_AGE_S)
            except StoreUnavailable:
                continue  # the store logs the outage
            if found:
                log.info("queued vendor pushes stored but not ingested", count=found)

    async def stop(self, grace_s: float) -> None:
        """Refuse new pushes, drain the queue (bounded by `grace_s`), stop the worker."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await wait_at_most(grace_s, self._queue.join())
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        left = self._queue.qsize()
        if left:
            log.warning("vendor pushes left stored for the next start", count=left)

    async def wait_idle(self) -> None:
        """Wait until every queued push has been processed (tests)."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._process(batch)
            except StoreUnavailable:
                pass  # still stored: the sweep queues the batch again (the store logs it)
            except Exception:  # logged; the pushes stay stored for the sweep
                log.exception("vendor push processing failed", count=len(batch))
            finally:
                for key, raw in batch:
                    self._queued_bytes -= len(raw)
                    self._queued.discard(key)
                    self._queue.task_done()
                self.processed += len(batch)

    async def _process(self, batch: list[Queued]) -> None:
        pushes = []
        for _, raw in batch:
            with contextlib.suppress(PushRejected):  # checked by the handler already
                pushes.append(parse_push(raw))
        events = [m for hook, m in pushes if hook in EVENT_HOOKS]
        keys = [key for key, _ in batch]

        async def forget(tx: IngestTx) -> None:
            for key in keys:
                await tx.delete_json(PUSH_KIND, key)

        # Per message: one the store rejects is skipped (logged, counted), not the batch.
        # The stored pushes are forgotten in the transaction that stores the rest.
        await self._ingestor.ingest(
            events, job="push", normalizer=normalize_push_event, also=forget
        )
        if self._clips is None:
            return
        for task_id in dict.fromkeys(
            str(m.get("task_id") or "") for h, m in pushes if h == TASK_HOOK
        ):
            if task_id:
                await self._clips.check_now(task_id)


def _error(status: int, code: str, message: str, *, retry_after: str | None = None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after else None
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


async def handle_push(request: web.Request) -> web.Response:
    """The route handler: delegates to the app's `PushIngest`."""
    push = request.app[BRIDGE].push
    if push is None:
        return _error(503, "unavailable", "push ingest is not running")
    return await push.handle(request)
