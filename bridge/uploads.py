"""Manual uploads (SPEC §5.3): a StorageList poller emitting `upload.updated`.

Each upload's last task state (and per-camera `state_number`s) is keyed state
(kind `upload`, key task id), written in the same transaction as the notification
it causes. The very first run only records a baseline, so enabling the poller does
not replay days of old uploads; after that a new upload and every state change is
notified once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import structlog

from bridge.clips import really_changed
from bridge.clock import Clock
from bridge.ingest import SeenOnce
from bridge.metrics import Metrics
from bridge.normalize import upload_data
from bridge.notifications import Notification, build_notification
from bridge.routing import route
from bridge.settings import Settings
from bridge.store.base import IngestTx, NewNotification, Store, is_outage
from bridge.upstream.client import UpstreamClient

log = structlog.get_logger(__name__)

UPLOAD_KIND: Final = "upload"
MARK_KIND: Final = "poller"
JOB: Final = "manual_uploads"


@dataclass
class UploadStats:
    fetched: int = 0
    notified: int = 0
    baseline: bool = False


class UploadsPoller:
    """Scans StorageList over the window a task can still change in."""

    job = JOB

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: UpstreamClient,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._store = store
        self._client = client
        self._clock = clock
        self._metrics = metrics
        # A queued upload is dropped by the device after give_up_after_s (3 days):
        # older uploads cannot change state any more.
        self._window_s = settings.poll.clips.give_up_after_s
        self._base_url = settings.upstream.base
        self._skipped = SeenOnce()

    async def run_once(self) -> UploadStats:
        """One scan: every page of the window, one transaction per page."""
        started = time.perf_counter()
        now = self._clock.now()
        stats = UploadStats()
        stats.baseline = await self._store.get_json(MARK_KIND, JOB) is None
        pages = self._client.iter_storage_pages(since=int(now - self._window_s), until=int(now))
        async for page in pages:
            self._metrics.items_fetched.labels(job=JOB).inc(len(page.items))
            stats.fetched += len(page.items)
            stats.notified += await self._store_page(page.items, now, baseline=stats.baseline)
        if stats.baseline:

            async def mark(tx: IngestTx) -> None:
                await tx.put_json(MARK_KIND, JOB, {"baseline_at": now})

            await self._store.ingest(mark)
        self._metrics.poll_runs.labels(job=JOB, outcome="success").inc()
        log.info(
            "poll run",
            job=JOB,
            fetched=stats.fetched,
            new=stats.notified,
            baseline=stats.baseline,
            duration_s=round(time.perf_counter() - started, 3),
        )
        return stats

    async def _store_page(self, items: list[dict[str, Any]], now: float, *, baseline: bool) -> int:
        """One transaction for the page; if the store refuses it for its data, item by
        item, skipping (logged once, counted) only what it refuses."""
        try:
            return await self._store_items(items, now, baseline=baseline)
        except Exception as err:
            if is_outage(err):
                raise
        notified = 0
        for item in items:
            try:
                notified += await self._store_items([item], now, baseline=baseline)
            except Exception as err:
                if is_outage(err):
                    raise
                self._metrics.items_malformed.labels(job=JOB).inc()
                if self._skipped.first_time(item):
                    log.warning(
                        "skipped malformed upstream item",
                        job=JOB,
                        reason=f"not storable ({type(err).__name__})",
                        task_id=item.get("task_id") if isinstance(item, dict) else None,
                    )
        return notified

    async def _store_items(self, items: list[Any], now: float, *, baseline: bool) -> int:
        notified: list[Notification] = []

        async def work(tx: IngestTx) -> None:
            notified.clear()
            new: list[NewNotification] = []
            for item in items:
                data = upload_data(item)
                task_id = data["task_id"]
                if not task_id:
                    continue
                known = await tx.get_json(UPLOAD_KIND, task_id)
                state = {"state_code": data["state_code"], "cameras": data["cameras"]}
                changed = known is None or really_changed(known, state)
                if not changed and known is not None and known.get("cameras") == state["cameras"]:
                    continue
                await tx.put_json(UPLOAD_KIND, task_id, {**state, "updated_at": now})
                if baseline or not changed:
                    continue
                n = build_notification("upload.updated", data, base_url=self._base_url, now=now)
                notified.append(n)
                new.append(NewNotification(n, route(self._settings.targets, n)))
            if new:
                await tx.add_notifications(new)

        await self._store.ingest(work)
        for n in notified:
            self._metrics.notifications.labels(type=n.type).inc()
        return len(notified)
