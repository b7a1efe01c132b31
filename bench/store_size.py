"""Store growth: bytes per notification and per delivery in the SQLite store.

Feeds N simulated events through the real ingest path (normalize, de-dup, routing,
the outbox transaction) into a fresh SQLite file with T targets, lets their media
arrive (one `event.updated` per event whose video uploads), marks every delivery
delivered as the dispatchers would, checkpoints the WAL and reads the size of every
table and index from SQLite's `dbstat` view.

    .venv/bin/python bench/store_size.py [--events 10000] [--targets 2]

Prints the bytes per event, per notification and per delivery, the share of each
table and index, and the sizing per 1,000 events a day kept `retention_days`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from bridge.clock import FakeClock
from bridge.ingest import EventIngestor
from bridge.metrics import Metrics
from bridge.settings import settings_from_dict
from bridge.simulator import Simulator, SimulatorConfig
from bridge.store.base import DeliveryState, Outcome
from bridge.store.sqlite import SqliteStore

T0 = 1_764_000_000.0


async def measure(events: int, targets: int) -> dict[str, Any]:
    clock = FakeClock(start=T0)
    sim = Simulator(
        SimulatorConfig(seed=3, devices=200, rate=0, backlog=events, base_time=T0), clock=clock
    )
    settings = settings_from_dict(
        {
            "upstream": {
                "base_url": "https://fleet.example.com",
                "api_key": "k" * 16,
                "auth": {"token": "t" * 16},
            },
            "store": {"url": "sqlite:////tmp/unused.db"},
            "targets": [{"name": f"target-{i}", "type": "console"} for i in range(targets)],
        },
        {},
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bridge.db"
        store = SqliteStore(path, clock)
        await store.open()
        ingestor = EventIngestor(settings, store, clock, Metrics())
        items = [e.item for e in sim.events]
        for i in range(0, len(items), 100):
            await ingestor.ingest(items[i : i + 100], job="events")
        await deliver_all(store, settings, clock)
        # Video arrives for 60% of the events (the simulator's share): one
        # event.updated each, a second full notification in the store.
        clock.advance(3600)
        items = [with_video(e.item) if i % 5 < 3 else e.item for i, e in enumerate(sim.events)]
        for i in range(0, len(items), 100):
            await ingestor.ingest(items[i : i + 100], job="events")
        await deliver_all(store, settings, clock)
        notifications = await store.count_notifications()
        updates = await store.count_notifications("event.updated")
        await store.close()
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes = dict(
                conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
            )
            deliveries = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
            body = conn.execute("SELECT avg(length(body)) FROM notifications").fetchone()[0]
        file_bytes = path.stat().st_size
    delivery_bytes = sum(v for k, v in sizes.items() if k.startswith("deliveries"))
    notification_bytes = sum(v for k, v in sizes.items() if k.startswith("notifications"))
    ticket_bytes = sum(v for k, v in sizes.items() if k.startswith("seen_tickets"))
    per_event = file_bytes / events
    return {
        "events": events,
        "targets": targets,
        "notifications": notifications,
        "event_updated": updates,
        "deliveries": deliveries,
        "file_bytes": file_bytes,
        "bytes_per_event": round(per_event),
        "bytes_per_notification": round(notification_bytes / notifications),
        "avg_body_bytes": round(body),
        "bytes_per_delivery": round(delivery_bytes / deliveries),
        "bytes_per_ticket": round(ticket_bytes / events),
        "by_table": {k: v for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])},
        # 1,000 events a day kept 14 days (the default retention_days).
        "mb_per_1000_events_day_14d": round(per_event * 1000 * 14 / 1e6, 1),
    }


def with_video(item: dict[str, Any]) -> dict[str, Any]:
    return {
        **item,
        "asset_info": {"uploading": False, "has_video": True},
        "videos_count": 1,
        "videos_total_count": 1,
        "video_uploaded": 1,
    }


async def deliver_all(store: SqliteStore, settings: Any, clock: FakeClock) -> None:
    for target in settings.targets:
        while claimed := await store.claim(target.name, clock.now(), 1000, fifo=False):
            outcomes = [Outcome(d.id, DeliveryState.DELIVERED, 1, 200) for d in claimed]
            await store.record_outcomes(outcomes, clock.now())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--targets", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.events, args.targets)), indent=2))


if __name__ == "__main__":
    main()
