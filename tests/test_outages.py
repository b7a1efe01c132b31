"""Outages and busy fleets (issue #9): the cursor, restarts after long downtime, the re-scan.

The simulator and the bridge share one FakeClock; the bridge is stopped and started
again on the same SQLite file, as an operator's restart or a crash would.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bridge_rig import ClientFactory, Rig, ServerFactory, make_rig
from conftest import wait_for
from structlog.testing import capture_logs
from webhook_receiver import always

from bridge.pollers import EventsPoller
from bridge.store.base import StoreUnavailable
from bridge.streak import failure_reason
from bridge.upstream.errors import UpstreamApiError, UpstreamAuthError, UpstreamUnavailable

START = 1_764_000_000.0
LOOKBACK = 60.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


START_FROMS = {"now": "now", "duration": "1h", "instant": _iso(START - 3600)}


async def _rig(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    events: dict[str, Any],
) -> Rig:
    return await make_rig(
        aiohttp_server,
        aiohttp_client,
        tmp_path,
        config={"poll": {"events": {"interval_s": 3600, **events}}},
        start=START,
        webhook=False,
    )


def _delivered(rig: Rig) -> set[str]:
    return {e["data"]["ticket"] for e in rig.console_envelopes() if e["type"] == "event.created"}


@pytest.mark.parametrize("start_from", sorted(START_FROMS))
async def test_restart_after_ten_lookbacks_of_downtime_loses_nothing(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, tmp_path: Path, start_from: str
) -> None:
    rig = await _rig(
        aiohttp_server,
        aiohttp_client,
        tmp_path,
        {"lookback_s": LOOKBACK, "start_from": START_FROMS[start_from]},
    )
    store = rig.bridge.store
    assert store is not None
    # The first successful poll stores the cursor, whatever start_from says.
    stored = await store.get_cursor("events")
    assert stored is not None
    assert START - LOOKBACK <= stored <= START
    rig.sim.add_event()
    rig.clock.advance(5)
    await rig.run("events")
    await rig.client.close()
    # Down for ten lookbacks; events keep happening meanwhile.
    for _ in range(60):
        rig.clock.advance(10)
        rig.sim.add_event(timestamp=int(rig.clock.now()) - 3)
    seen = len(rig.sim.requests)
    await rig.restart()
    await rig.settle()
    expected = {e.item["ticket"] for e in rig.sim.events}
    assert len(expected) == 61
    # The head reads the whole gap once; the re-scan reads lookback_s around each of
    # its ends, not the gap again.
    windows = {
        (int(r.query["since"]), int(r.query["until"]))
        for r in rig.sim.requests[seen:]
        if r.path == "/V2/events"
    }
    assert [w for w in windows if w[1] - w[0] > 600] == [(int(stored) + 5 - 30, int(START) + 605)]
    assert all(w[1] - w[0] <= LOOKBACK + 5 for w in windows if w[1] - w[0] <= 600)
    await wait_for(lambda: _delivered(rig) >= expected, message="every ticket delivered")
    assert _delivered(rig) == expected
    assert rig.bridge.events_poller is not None
    assert rig.bridge.store is not None
    cursor = await rig.bridge.store.get_cursor("events")
    assert rig.bridge.events_poller.status.cursor == cursor == rig.clock.now()


async def _get(rig: Rig, path: str, status: int = 200) -> Any:
    resp = await rig.client.get(path, headers=rig.auth)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_removed_target_deliveries_are_kept_reported_and_listable(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    rig = await make_rig(aiohttp_server, aiohttp_client, tmp_path)
    rig.receiver.behaviour = always(503)
    for _ in range(3):
        rig.sim.add_event()
    rig.clock.advance(5)
    await rig.run("events")
    await rig.settle()
    full = rig.settings
    rig.settings = full.model_copy(
        update={"targets": [t for t in full.targets if t.name != "hook"]}
    )
    with capture_logs() as logs:
        await rig.restart()
    kept = [e for e in logs if e["event"].startswith("pending deliveries kept for targets")]
    assert len(kept) == 1
    assert kept[0]["orphaned"] == {"hook": 3}
    status = await _get(rig, "/api/v1/status")
    assert status["orphaned"] == {"hook": 3}
    assert set(status["targets"]) == {"out"}
    listed = await _get(rig, "/api/v1/deliveries?target=hook")
    assert [d["state"] for d in listed["items"]] == ["pending"] * 3
    await _get(rig, "/api/v1/deliveries?target=nope", status=400)
    # Added again, the target resumes them.
    rig.receiver.behaviour = always(200)
    rig.settings = full
    await rig.restart()
    rig.clock.advance(3)  # past the backoff the 503s gave them
    await wait_for(lambda: len(rig.receiver.envelopes) == 3, message="resumed deliveries")
    assert (await _get(rig, "/api/v1/status"))["orphaned"] == {}


async def test_a_refused_login_backs_off_and_shows_as_the_reason(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    rig = await make_rig(
        aiohttp_server,
        aiohttp_client,
        tmp_path,
        webhook=False,
        password_auth=True,
    )
    rig.sim.config.password = "changed-by-someone"
    rig.sim.revoke_token()

    def logins() -> int:
        return sum(1 for r in rig.sim.requests if r.path == "/V2/auth")

    before = logins()
    with capture_logs() as logs:
        for _ in range(5):
            await rig.run("events")
            rig.clock.advance(5)
    assert logins() == before + 1  # one refused login, then the back-off
    status = await _get(rig, "/api/v1/status")
    assert status["pollers"]["events"]["failing"] is True
    assert status["pollers"]["events"]["reason"] == "auth failed"
    assert status["upstream"]["login_failing"] is True
    assert status["upstream"]["login_retry_at"] is not None
    failed = [e for e in logs if e["event"] == "poll failed"]
    assert len(failed) == 1
    assert not any("exc_info" in e for e in logs)
    # (The end of the back-off and the recovery: test_upstream_client.py, on a fake clock.)


async def test_store_unavailable_poll_is_one_line_no_traceback_and_recovers(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    rig = await make_rig(aiohttp_server, aiohttp_client, tmp_path, webhook=False)
    store = rig.bridge.store
    assert store is not None
    poller = rig.bridge.events_poller
    assert poller is not None
    with capture_logs() as logs:
        await store.close()
        for _ in range(3):
            rig.sim.add_event()
            rig.clock.advance(5)
            await rig.run("events")
        assert poller.status.reason == "store unavailable"
        assert rig.bridge.scheduler is not None
        assert rig.bridge.scheduler.status["events"].reason == "store unavailable"
        await store.open()
        await rig.run("events")
    assert [e["event"] for e in logs if e.get("job") == "events"].count("poll failed") == 1
    assert not any("exc_info" in e for e in logs)
    assert poller.status.reason is None
    assert poller.status.last_error is None
    assert [e["event"] for e in logs].count("poll recovered") == 1
    await wait_for(lambda: len(rig.console_envelopes()) == 3, message="nothing lost")


async def test_sigterm_during_a_long_poll_stops_at_the_next_page(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    rig = await make_rig(
        aiohttp_server,
        aiohttp_client,
        tmp_path,
        config={"upstream": {"page_size": 20}},
        webhook=False,
    )
    for i in range(400):
        rig.sim.add_event(timestamp=int(rig.clock.now()) - 30 + i % 30)
    rig.sim.config.faults.slow_s = 0.05
    rig.sim.queue_faults(*["slow"] * 20, path_prefix="/V2/events")

    def pages() -> int:
        return sum(1 for r in rig.sim.requests if r.path == "/V2/events")

    before = pages()
    cursor = await rig.bridge.store.get_cursor("events")  # type: ignore[union-attr]
    poll = asyncio.ensure_future(rig.run("events"))
    await wait_for(lambda: pages() >= before + 3, message="paging under way")
    with capture_logs() as logs:
        stopping_at = pages()
        await rig.client.close()  # the graceful stop SIGTERM triggers
    await poll
    assert pages() - stopping_at <= 1  # the page in flight, then nothing more
    assert any(e["event"] == "poll stopped at a page boundary for shutdown" for e in logs)
    assert not any(e.get("log_level") in ("error", "critical") for e in logs)
    assert not any("exc_info" in e for e in logs)
    # The window was not finished, so the cursor did not pass it.
    with sqlite3.connect(tmp_path / "bridge.db") as conn:
        (stored,) = conn.execute("SELECT value FROM cursors WHERE job = 'events'").fetchone()
    assert stored == cursor


async def test_a_busy_fleet_reads_the_head_every_run_and_rescans_within_its_budget(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    rig = await make_rig(
        aiohttp_server,
        aiohttp_client,
        tmp_path,
        config={"upstream": {"page_size": 20}},
        webhook=False,
    )
    now = int(rig.clock.now())
    for i in range(600):  # a full lookback window: 600 events in the last 15 minutes
        rig.sim.add_event(timestamp=now - 899 + i * 3 // 2)
    rig.clock.advance(1)
    await rig.run("events")  # the bridge's own poll stores them all
    b = rig.bridge
    assert b.client is not None
    assert b.ingestor is not None
    cfg = b.settings.poll.events.model_copy(
        update={
            "interval_s": 10,
            "lookback_s": 900,
            "head_lookback_s": 30,
            "rescan_interval_s": 60,
        }
    )
    # 2 requests/s: the re-scan may read 0.5 * 2 * 10 = 10 pages per run.
    poller = EventsPoller(cfg, b.client, b.ingestor, rig.clock, b.metrics, max_requests_per_s=2)
    assert poller.rescan_pages_per_run == 10

    def pages() -> int:
        return sum(1 for r in rig.sim.requests if r.path == "/V2/events")

    per_run: list[int] = []
    late: dict[str, Any] | None = None
    for run in range(12):
        for _ in range(20):  # 2 new events per second keep arriving
            rig.sim.add_event(timestamp=int(rig.clock.now()))
        if run == 1:
            # Arrives 800 s late: older than the head, inside lookback_s, and behind
            # where the running sweep has got to: the next sweep finds it.
            late = rig.sim.add_event(timestamp=int(rig.clock.now()) - 800)
        before = pages()
        await poller.run_once()
        per_run.append(pages() - before)
        rig.clock.advance(10)
    # Old code re-read the whole window every run (31 pages of 20 here).
    # The head: [cursor - 30 s, now], both ends inclusive, holds up to five batches of
    # 20 here (5 pages), plus the empty page that ends a list of whole pages.
    head_pages = 6
    assert max(per_run) <= head_pages + 10, str(per_run)
    # Two sweeps of about 32 pages in 12 runs, not 12 full re-reads.
    assert sum(per_run) <= 12 * head_pages + 2 * 35, per_run
    assert late is not None
    await wait_for(
        lambda: late["ticket"] in _delivered(rig), message="the late event, from the re-scan"
    )
    expected = {e.item["ticket"] for e in rig.sim.events}
    await wait_for(lambda: _delivered(rig) >= expected, message="every event")


def test_failure_reasons_name_the_condition() -> None:
    full = StoreUnavailable("SQLite ingest failed: database or disk is full")
    assert failure_reason(full) == "store full"
    assert failure_reason(StoreUnavailable("[Errno 28] No space left on device")) == "store full"
    assert failure_reason(StoreUnavailable("the SQLite store is closed")) == "store unavailable"
    assert failure_reason(UpstreamAuthError("refused", status=401)) == "auth failed"
    assert failure_reason(UpstreamUnavailable("timeout")) == "upstream unavailable"
    assert failure_reason(UpstreamApiError("no", status=400)) == "upstream error"
    assert failure_reason(ValueError("bug")) == "internal error"
