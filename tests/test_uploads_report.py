"""The StorageList poller (`upload.updated`) and the safety report job (`report.safety`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from bridge_rig import Rig, make_rig
from conftest import wait_for

from bridge.clock import utc_iso
from bridge.report import cadence, previous_period
from bridge.simulator.analytics import safety_report as sim_safety_report

RigFactory = Callable[..., Awaitable[Rig]]
NY = "America/New_York"


@pytest.fixture
def rig_factory(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> RigFactory:
    async def factory(**kw: Any) -> Rig:
        return await make_rig(aiohttp_server, aiohttp_client, tmp_path, **kw)

    return factory


# --------------------------------------------------------------------------- uploads


async def test_storage_list_poller_emits_upload_updated_once_per_state_change(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory(config={"poll": {"manual_uploads": {"enabled": True}}})
    await rig.run("manual_uploads")  # the first run only records a baseline
    store = rig.bridge.store
    assert store is not None
    device = rig.sim.devices[2]
    task = rig.sim.create_task(
        device,
        cam_id="C_F",
        file_name="manual-upload",
        target_timestamp=int(rig.clock.now()) - 300,
        duration=10,
        single_event=True,
    )

    async def run_and_count() -> int:
        await rig.run("manual_uploads")
        return await store.count_notifications("upload.updated")

    assert await run_and_count() == 1  # new upload: upcoming
    assert await run_and_count() == 1  # nothing changed
    rig.clock.advance(5)
    assert await run_and_count() == 2  # processing
    rig.clock.advance(3)
    assert await run_and_count() == 2  # still processing
    rig.clock.advance(60)
    assert await run_and_count() == 3  # success (jumped over clipping/uploading)
    assert await run_and_count() == 3

    await wait_for(lambda: len(rig.receiver.of_type("upload.updated")) == 3)
    uploads = rig.receiver.of_type("upload.updated")
    assert [u["data"]["state"] for u in uploads] == ["upcoming", "processing", "success"]
    assert {u["data"]["task_id"] for u in uploads} == {task.task_id}
    assert uploads[-1]["data"]["ticket"] == task.ticket
    assert uploads[-1]["data"]["device_cid"] == device.device_cid
    rig.assert_all_valid()


# --------------------------------------------------------------------------- report


def ts(tz: str, *args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


def test_previous_period_is_the_previous_local_day_week_or_month() -> None:
    day = previous_period(ts(NY, 2026, 3, 10, 7, 0), "0 7 * * *", NY)
    assert (day.since, day.until) == (ts(NY, 2026, 3, 9), ts(NY, 2026, 3, 10))
    dst = previous_period(ts(NY, 2026, 3, 9, 7, 0), "0 7 * * *", NY)  # DST began Mar 8
    assert dst.until - dst.since == 23 * 3600
    week = previous_period(ts("UTC", 2026, 3, 11, 7, 0), "0 7 * * 1", "UTC")
    assert (week.since, week.until) == (ts("UTC", 2026, 3, 2), ts("UTC", 2026, 3, 9))
    month = previous_period(ts("UTC", 2026, 3, 1, 7, 0), "0 7 1 * *", "UTC")
    assert (month.since, month.until) == (ts("UTC", 2026, 2, 1), ts("UTC", 2026, 3, 1))
    assert cadence("0 7 * * 1-5") == "day"
    # Any moment of one day maps to the same period key: one report per period.
    late = previous_period(ts(NY, 2026, 3, 10, 23, 59), "0 7 * * *", NY)
    assert late.key == day.key
    assert late.key != dst.key


async def test_safety_report_job_reports_each_period_once_with_the_simulators_counts(
    rig_factory: RigFactory,
) -> None:
    start = ts(NY, 2026, 3, 10, 7, 0, 5)
    rig = await rig_factory(
        start=start,
        webhook=False,  # the fake clock is months in the past: signatures would be stale
        config={"poll": {"safety_report": {"enabled": True, "cron": "0 7 * * *", "tz": NY}}},
    )
    yesterday = [(4, 1), (4, 3), (1, 3), (31, 2), (32, 1)]  # (type, severity)
    for hour, (code, level) in enumerate(yesterday, start=8):
        rig.sim.add_event(type=code, severity_level=level, timestamp=int(ts(NY, 2026, 3, 9, hour)))
    rig.sim.add_event(type=4, timestamp=int(ts(NY, 2026, 3, 8, 23, 59)))  # the day before
    rig.sim.add_event(type=11, timestamp=int(ts(NY, 2026, 3, 10, 0, 0)))  # today

    data = await rig.run("safety_report")
    assert data is not None
    assert data["since"] == utc_iso(ts(NY, 2026, 3, 9))
    assert data["tz"] == NY
    assert data["categories"] == {
        "sensor": 3,
        "adas": 0,
        "dms": 2,
        "traffic_sign": 0,
        "other": 0,
    }
    expected = sim_safety_report(
        rig.sim.log.window(int(ts(NY, 2026, 3, 9)), int(ts(NY, 2026, 3, 10)) - 1), ZoneInfo(NY)
    )
    assert data["trips"]["total_trips"] == expected["summary"]["trip"]["total_trips"]
    assert data["total_events"] == 5

    assert await rig.run("safety_report") is None  # same period: nothing new
    await rig.restart()
    assert await rig.run("safety_report") is None  # nor after a restart
    store = rig.bridge.store
    assert store is not None
    assert await store.count_notifications("report.safety") == 1

    rig.clock.set(ts(NY, 2026, 3, 11, 7, 0, 5))  # the next day's run
    data = await rig.run("safety_report")
    assert data is not None
    assert data["categories"]["adas"] == 1
    assert data["total_events"] == 1
    assert await store.count_notifications("report.safety") == 2

    def reports() -> list[dict[str, Any]]:
        # At-least-once: a delivery in flight at the restart may be written twice.
        found = {e["id"]: e for e in rig.console_envelopes() if e["type"] == "report.safety"}
        return sorted(found.values(), key=lambda e: str(e["id"]))

    await wait_for(lambda: len(reports()) == 2, message="two reports on the console")
    assert [r["data"]["since"] for r in reports()] == [
        utc_iso(ts(NY, 2026, 3, 9)),
        utc_iso(ts(NY, 2026, 3, 10)),
    ]
    rig.assert_all_valid()
