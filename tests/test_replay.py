"""`fleet-bridge replay` re-delivers stored notifications with their original ids."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from aiohttp.test_utils import TestServer
from webhook_receiver import SECRET, Receiver

from bridge.clock import SystemClock
from bridge.notifications import build_notification
from bridge.settings import StoreSettings
from bridge.store import open_store
from bridge.store.base import DeliveryState, IngestTx, NewNotification, Outcome

ServerFactory = Callable[..., Awaitable[TestServer]]


async def test_replay_cli_resends_a_time_range_with_original_ids(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    rec = Receiver()
    server = await aiohttp_server(rec.app())
    db = tmp_path / "bridge.db"
    store = open_store(StoreSettings(url=f"sqlite:///{db}"), SystemClock())
    await store.open()
    now = time.time()
    old = [
        build_notification("bridge.test", {"n": i}, base_url="http://x", now=now - 7200 + i)
        for i in range(3)
    ]
    recent = [
        build_notification("bridge.test", {"n": i}, base_url="http://x", now=now - 600 + i)
        for i in range(4)
    ]

    async def add(tx: IngestTx) -> None:
        await tx.add_notifications([NewNotification(n, ["hook"]) for n in old + recent])

    await store.ingest(add)
    claimed = await store.claim("hook", now, 100, fifo=False)
    await store.record_outcomes(
        [Outcome(d.id, DeliveryState.DELIVERED, 1, status=200) for d in claimed], now
    )
    await store.close()

    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": {
                    "base_url": "http://127.0.0.1:9",
                    "api_key": "k-123456",
                    "auth": {"token": "t-123456"},
                },
                "store": {"url": f"sqlite:///{db}"},
                "logging": {"format": "json", "level": "warning"},
                "targets": [
                    {
                        "name": "hook",
                        "type": "webhook",
                        "url": str(server.make_url("/hook")),
                        "secret": SECRET,
                    },
                ],
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "replay", "--config", str(config), "--target", "hook",
        "--since", "1h", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "replayed 4 notification(s) to hook; 0 still pending" in out.decode()
    assert [e["id"] for e in rec.envelopes] == [n.id for n in recent]


async def test_replay_cli_unknown_target_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": {
                    "base_url": "http://127.0.0.1:9",
                    "api_key": "k-123456",
                    "auth": {"token": "t-123456"},
                },
                "store": {"url": f"sqlite:///{tmp_path / 'b.db'}"},
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "replay", "--config", str(config), "--target", "nope",
        "--since", "1h", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "--target: no target named 'nope'" in err.decode()
