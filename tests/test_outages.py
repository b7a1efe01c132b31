"""Outages and busy fleets (issue #9): the cursor, restarts after long downtime, the re-scan.

The simulator and the bridge share one FakeClock; the bridge is stopped and started
again on the same SQLite file, as an operator's restart or a crash would.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bridge_rig import ClientFactory, Rig, ServerFactory, make_rig
from conftest import wait_for

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
    await rig.restart()
    await rig.settle()
    expected = {e.item["ticket"] for e in rig.sim.events}
    assert len(expected) == 61
    await wait_for(lambda: _delivered(rig) >= expected, message="every ticket delivered")
    assert _delivered(rig) == expected
    assert rig.bridge.events_poller is not None
    assert rig.bridge.store is not None
    cursor = await rig.bridge.store.get_cursor("events")
    assert rig.bridge.events_poller.status.cursor == cursor == rig.clock.now()
