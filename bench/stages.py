"""Per-stage CPU budget: each stage of the bridge's data path timed on its own.

Runs the bridge's own parts in this process (the simulator and the receiver are
separate processes) and reports the CPU each stage costs per notification:
fetch/parse, normalize, de-dup, build (envelope + body + routing), store (the
outbox transaction), claim, sign+send, outcome; then a re-seen unchanged item
(the same pages ingested again); and, in the same run, a plain aiohttp client
signing and posting the same bodies. CPU is `time.process_time()`, so the SQLite
thread's work counts.

    python bench/stages.py [--events 20000] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    SECRET,
    free_port,
    new_loop,
    post_signed,
    start_receiver,
    start_simulator,
    stop,
    wait_http,
)

from bridge.clock import SystemClock
from bridge.dedup import decide, event_data_with_revision
from bridge.ingest import EventIngestor
from bridge.metrics import Metrics
from bridge.normalize import NormalizedEvent
from bridge.notifications import build_notification
from bridge.pollers import poll_windows
from bridge.routing import route
from bridge.settings import WebhookTarget, settings_from_dict
from bridge.store.base import Delivery, DeliveryState, HandOff, Outcome
from bridge.store.sqlite import SqliteStore
from bridge.targets.base import LazyEnvelope
from bridge.targets.webhook import WebhookSender
from bridge.upstream.client import UpstreamClient

CLAIM_BATCH = 16  # what a dispatcher with max_in_flight 8 claims at a time
OUTCOME_BATCH = 150  # about what a 50 ms flush collects at 3,000 deliveries/s


class Stages:
    """CPU µs per notification for each named stage."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.us: dict[str, float] = {}

    @contextmanager
    def timed(self, name: str, count: int | None = None) -> Iterator[None]:
        cpu = time.process_time()
        yield
        self.us[name] = (time.process_time() - cpu) / (count or self.n) * 1e6


async def fetch_pages(client: UpstreamClient, now: float) -> list[list[dict[str, Any]]]:
    pages = []
    for since, until in poll_windows(now - 25 * 3600, now, 3600):
        async for page in client.iter_event_pages(since=since, until=until):
            pages.append(page.items)
    return pages


async def send_all(sender: WebhookSender, deliveries: list[Delivery], concurrency: int) -> None:
    queue = list(reversed(deliveries))

    async def worker() -> None:
        while queue:
            d = queue.pop()
            result = await sender.send(d, LazyEnvelope(d.body), d.body)
            assert result.ok, result

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def plain_client(hook: str, bodies: list[tuple[str, str]], concurrency: int) -> None:
    """What the ceiling in bench/backlog.py does: sign and POST, nothing else."""
    async with aiohttp.ClientSession() as session:
        await post_signed(session, hook, bodies, concurrency)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sim_port, rec_port = free_port(), free_port()
    sim, rec = start_simulator(sim_port, args.events), start_receiver(rec_port)
    sim_url, hook = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{rec_port}/hook"
    tmp = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    stack = AsyncExitStack()
    try:
        await wait_http(f"{sim_url}/V2/events")
        await wait_http(f"http://127.0.0.1:{rec_port}/count")
        settings = settings_from_dict(
            {
                "upstream": {
                    "base_url": sim_url,
                    "api_key": "sim-key",
                    "auth": {"token": "sim-token"},
                    "page_size": 100,
                    "max_requests_per_s": 1000,
                },
                "store": {"url": f"sqlite:///{tmp / 'bridge.db'}"},
                "targets": [{"name": "bench", "type": "webhook", "url": hook, "secret": SECRET}],
            }
        )
        target_cfg = settings.targets[0]
        assert isinstance(target_cfg, WebhookTarget)
        clock, metrics = SystemClock(), Metrics()
        store = SqliteStore(tmp / "bridge.db", clock)
        await store.open()
        stack.push_async_callback(store.close)
        ingestor = EventIngestor(settings, store, clock, metrics)
        s = Stages(args.events)
        async with aiohttp.ClientSession() as up:
            client = UpstreamClient(settings.upstream, up, clock=clock)
            now = clock.now()
            with s.timed("fetch/parse"):
                pages = await fetch_pages(client, now)
            client.close()
            # Window ends are inclusive, so an event on a boundary comes twice.
            n = s.n = sum(len(p) for p in pages)
            assert n >= args.events, n

            normalized: list[list[NormalizedEvent]] = []
            with s.timed("normalize"):
                for items in pages:
                    normalized.append(ingestor.normalize(items, job="events")[0])
            with s.timed("de-dup"):
                decided = [
                    (ev, decide(None, ev.ticket, ev.fingerprint, now))
                    for events in normalized
                    for ev in events
                ]
            with s.timed("build (envelope, body, routing)"):
                for ev, decision in decided:
                    data = event_data_with_revision(ev.data, decision.revision, decision.changed)
                    built = build_notification(
                        "event.created", data, base_url="x", now=now, event_at=ev.occurred_at
                    )
                    _ = built.body
                    route(settings.targets, built)
            before = time.process_time()
            for items in pages:
                await ingestor.ingest(items, job="events")
            ingest_us = (time.process_time() - before) / n * 1e6
            pipeline = s.us["normalize"] + s.us["de-dup"] + s.us["build (envelope, body, routing)"]
            s.us["store (outbox transaction)"] = ingest_us - pipeline

            # SQLite hands fresh rows to the local dispatcher already claimed: the same
            # pages into a second store, every row handed off, so the claim stage
            # above does not apply to them.
            handed: list[Delivery] = []
            store2 = SqliteStore(tmp / "handoff.db", clock)
            await store2.open()
            stack.push_async_callback(store2.close)
            ingestor2 = EventIngestor(
                settings, store2, clock, Metrics(), reserve=lambda _t, k: _Room(k, handed)
            )
            before = time.process_time()
            for items in pages:
                await ingestor2.ingest(items, job="events")
            ingest_us = (time.process_time() - before) / n * 1e6
            s.us["hand-off: store, rows in flight (no claim)"] = ingest_us - pipeline
            assert args.events <= len(handed) <= n, len(handed)

            # The first re-sighting is checked against the store; later ones are
            # recognized by their raw fingerprint (bridge/reseen.py).
            for name in ("re-seen item, first time (no fetch)", "re-seen item, after (no fetch)"):
                with s.timed(name):
                    for items in pages:
                        stats = await ingestor.ingest(items, job="events")
                        assert stats.duplicates == len(items), stats

            # Claims and outcomes alternate as in a dispatcher: claimed rows stay in
            # the open-deliveries index until their outcome is written, and a claim
            # walks past them.
            deliveries: list[Delivery] = []
            claim_cpu = outcome_cpu = 0.0
            written = 0
            while True:
                cpu = time.process_time()
                claimed = await store.claim("bench", clock.now(), CLAIM_BATCH, fifo=False)
                claim_cpu += time.process_time() - cpu
                deliveries.extend(claimed)
                if len(deliveries) - written >= OUTCOME_BATCH or not claimed:
                    outcomes = [
                        Outcome(d.id, DeliveryState.DELIVERED, 1, status=200)
                        for d in deliveries[written:]
                    ]
                    cpu = time.process_time()
                    await store.record_outcomes(outcomes, clock.now())
                    outcome_cpu += time.process_time() - cpu
                    written = len(deliveries)
                if not claimed:
                    break
            m = len(deliveries)
            assert args.events <= m <= n, m
            s.us["claim"] = claim_cpu / m * 1e6
            sender = WebhookSender(target_cfg, clock=clock)
            with s.timed("sign+send", m):
                await send_all(sender, deliveries, args.concurrency)
            s.us["outcome"] = outcome_cpu / m * 1e6
            with s.timed("plain client: sign+send", m):
                await plain_client(hook, [(d.notification_id, d.body) for d in deliveries], 8)
    finally:
        await stack.aclose()
        stop(sim, rec)
    bridge_stages = [k for k in s.us if not k.startswith(("plain", "re-seen", "hand-off"))]
    return {
        "events": args.events,
        "loop": args.loop,
        "cpu_us_per_notification": {k: round(v, 1) for k, v in s.us.items()},
        "bridge_stages_sum_us": round(sum(s.us[k] for k in bridge_stages), 1),
    }


class _Room:
    """A reservation with room for every row (`EventIngestor`'s reserve), collecting them."""

    def __init__(self, k: int, into: list[Delivery]) -> None:
        self.hand_off = HandOff(uuid.uuid4().hex, k)
        self._into = into

    def accept(self, deliveries: Sequence[Delivery]) -> None:
        self._into.extend(deliveries)

    def cancel(self) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    args = p.parse_args()
    loop = new_loop(args.loop)
    try:
        print(json.dumps(loop.run_until_complete(run(args)), indent=2))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
