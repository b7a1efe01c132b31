"""Clip requests through the admin API, task tracking to the end, restarts, auto_request.

The simulator runs videoClip tasks 0→1→4→5→2 (or →3 with a camera error) in 5 s steps
of the shared FakeClock; tests move the clock and run the `clips` job themselves.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from bridge_rig import Rig, make_rig
from conftest import wait_for
from structlog.testing import capture_logs

from bridge.clips import (
    AUTO_KIND,
    CLIP_KIND,
    GIVE_UP_CODE,
    ClipTracker,
    check_delay,
    really_changed,
)
from bridge.clock import utc_iso
from bridge.metrics import Metrics
from bridge.normalize import CAMERA_ERRORS

RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
def rig_factory(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> RigFactory:
    async def factory(**kw: Any) -> Rig:
        return await make_rig(aiohttp_server, aiohttp_client, tmp_path, **kw)

    return factory


def clip_body(rig: Rig, **overrides: Any) -> dict[str, Any]:
    return {
        "serial_number": rig.sim.devices[0].serial_number,
        "cam_id": "ALL",
        "target_timestamp": utc_iso(rig.clock.now() - 120),
        "duration_s": 30,
        "file_name": "incident-1",
        **overrides,
    }


async def track_until_done(rig: Rig, task_id: str, *, steps: int = 60) -> dict[str, Any]:
    """Move the clock 5 s at a time, running the tracking job, until the clip is done."""
    for _ in range(steps):
        rig.clock.advance(5)
        await rig.run("clips")
        resp = await rig.client.get(f"/api/v1/clips/{task_id}", headers=rig.auth)
        view = await resp.json()
        if view["done"]:
            return dict(view)
    raise AssertionError("clip never finished")


def clip_envelopes(rig: Rig, task_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in rig.receiver.envelopes
        if e["type"].startswith("clip.") and e["data"]["task_id"] == task_id
    ]


async def wait_for_type(rig: Rig, task_id: str, type_: str) -> None:
    await wait_for(
        lambda: any(e["type"] == type_ for e in clip_envelopes(rig, task_id)),
        message=f"{type_} at the receiver",
    )


async def test_clip_requested_through_the_api_is_tracked_to_completion(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    resp = await rig.post_clip(clip_body(rig))
    assert resp.status == 202
    created = await resp.json()
    task_id = created["task_id"]
    assert created["state"] == "upcoming"
    assert created["done"] is False
    assert rig.videoclip_calls() == 1
    resp = await rig.client.get(f"/api/v1/clips/{task_id}", headers=rig.auth)
    assert (await resp.json())["task_id"] == task_id

    view = await track_until_done(rig, task_id)
    assert view["state"] == "success"
    await wait_for_type(rig, task_id, "clip.completed")
    await rig.settle()

    envelopes = clip_envelopes(rig, task_id)
    types = [e["type"] for e in envelopes]
    assert types[0] == "clip.requested"
    assert types[-1] == "clip.completed"
    updates = types[1:-1]
    assert updates
    assert set(updates) == {"clip.updated"}
    # Each clip.updated is a real change: no two consecutive envelopes in the same state.
    states = [(e["data"]["state_code"], json.dumps(e["data"]["cameras"])) for e in envelopes]
    assert len(states) == len(set(states))
    done = envelopes[-1]["data"]
    assert done["ticket"]
    assert done["error"] is None
    assert done["videos"]
    assert all(v["url"].startswith("http") for v in done["videos"])
    assert {v["cam_id"] for v in done["videos"]} == set(rig.sim.devices[0].cameras)
    rig.assert_all_valid()
    # Nothing more once done: later runs neither check nor notify.
    before = len(rig.sim.requests)
    rig.clock.advance(600)
    stats = await rig.run("clips")
    assert stats.checked == 0
    assert len(rig.sim.requests) == before


async def test_camera_failure_yields_clip_failed_with_code_and_description(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    rig.sim.fail_next_clips("D_E20003")
    resp = await rig.post_clip(clip_body(rig, cam_id="C_F", file_name="busy"))
    task_id = (await resp.json())["task_id"]
    view = await track_until_done(rig, task_id)
    assert view["state"] == "failed"
    await wait_for_type(rig, task_id, "clip.failed")
    failed = clip_envelopes(rig, task_id)[-1]
    assert failed["type"] == "clip.failed"
    assert failed["data"]["error"] == {
        "code": "D_E20003",
        "description": CAMERA_ERRORS["D_E20003"],
    }
    assert failed["data"]["videos"] == []
    assert "clip.completed" not in [e["type"] for e in clip_envelopes(rig, task_id)]
    rig.assert_all_valid()


async def test_restart_mid_task_resumes_tracking(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    resp = await rig.post_clip(clip_body(rig))
    task_id = (await resp.json())["task_id"]
    rig.clock.advance(6)
    await rig.run("clips")
    await wait_for_type(rig, task_id, "clip.updated")

    await rig.restart()  # a new bridge on the same database
    view = await track_until_done(rig, task_id)
    assert view["state"] == "success"
    await wait_for_type(rig, task_id, "clip.completed")
    await rig.settle()
    types = [e["type"] for e in clip_envelopes(rig, task_id)]
    assert types.count("clip.requested") == 1
    assert types.count("clip.completed") == 1
    assert types[-1] == "clip.completed"
    rig.assert_all_valid()


BAD_FILE_NAME_CHARS = ["../x", 'a"b', "a'b", "a&b", "a/b", "a\\b", "a?b", "a#b", "a:b"]


def invalid_bodies(rig: Rig) -> list[tuple[str, Any, str]]:
    """(label, body, field the 400 must name)."""
    good = clip_body(rig)
    cases: list[tuple[str, Any, str]] = [
        (f"file_name {bad!r}", {**good, "file_name": bad}, "file_name")
        for bad in BAD_FILE_NAME_CHARS
    ]
    cases += [
        ("empty file_name", {**good, "file_name": ""}, "file_name"),
        ("duration 0", {**good, "duration_s": 0}, "duration_s"),
        ("duration 86401", {**good, "duration_s": 86401}, "duration_s"),
        ("duration as text", {**good, "duration_s": "30"}, "duration_s"),
        ("unknown cam_id", {**good, "cam_id": "C_X"}, "cam_id"),
        ("bad time", {**good, "target_timestamp": "yesterday"}, "target_timestamp"),
        ("naive time", {**good, "target_timestamp": "2026-01-01T00:00:00"}, "target_timestamp"),
        ("unknown field", {**good, "durationS": 5}, "durationS"),
    ]
    for missing in ("serial_number", "cam_id", "target_timestamp", "file_name"):
        body = {k: v for k, v in good.items() if k != missing}
        cases.append((f"missing {missing}", body, missing))
    cases += [
        ("not JSON", "{not json", "body"),
        ("empty body", "", "body"),
        ("JSON array", "[1, 2]", "body"),
    ]
    return cases


async def test_every_invalid_body_is_400_naming_the_field_and_never_reaches_the_vendor(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    for label, body, field in invalid_bodies(rig):
        resp = await rig.post_clip(body)
        assert resp.status == 400, label
        error = (await resp.json())["error"]
        assert error["field"] == field, label
        assert field in error["message"], label
    assert rig.videoclip_calls() == 0
    # The same body, fixed, goes through: the checks above refused only the bad part.
    resp = await rig.post_clip(clip_body(rig, target_timestamp=int(rig.clock.now()) - 60))
    assert resp.status == 202
    assert rig.videoclip_calls() == 1


async def test_unknown_clip_is_a_json_404(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    resp = await rig.client.get("/api/v1/clips/nope", headers=rig.auth)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_clip_past_give_up_after_s_ends_as_failed_with_a_reason(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory(
        sim={"clip_step_s": 100_000}, config={"poll": {"clips": {"give_up_after_s": 60}}}
    )
    resp = await rig.post_clip(clip_body(rig))
    task_id = (await resp.json())["task_id"]
    rig.clock.advance(61)
    await rig.run("clips")
    await wait_for_type(rig, task_id, "clip.failed")
    failed = clip_envelopes(rig, task_id)[-1]["data"]
    assert failed["error"]["code"] == GIVE_UP_CODE
    assert "gave up" in failed["error"]["description"]
    assert "give_up_after_s" in failed["error"]["description"]
    stored = await rig.bridge.store.get_json(CLIP_KIND, task_id)  # type: ignore[union-attr]
    assert stored is not None
    assert stored["done"] is True
    rig.assert_all_valid()


async def test_auto_request_fires_once_per_matching_ticket(rig_factory: RigFactory) -> None:
    rule = {"match": {"min_severity": "severe", "categories": ["sensor"]}, "duration_s": 20}
    rig = await rig_factory(config={"clips": {"auto_request": [rule]}})
    device = rig.sim.devices[1]
    ts = int(rig.clock.now()) - 30
    hit = rig.sim.add_event(type=4, severity_level=3, device_cid=device.device_cid, timestamp=ts)
    rig.sim.add_event(type=4, severity_level=1, timestamp=ts)  # not severe enough
    rig.sim.add_event(type=11, severity_level=3, timestamp=ts)  # severe, but adas
    rig.clock.advance(1)
    await rig.run("events")
    clips = rig.bridge.clips
    assert clips is not None
    await clips.wait_auto_idle()

    assert rig.videoclip_calls() == 1
    call = next(r for r in rig.sim.requests if r.path.startswith("/V2/event/videoClip/"))
    assert call.path.endswith(device.device_cid)  # no serial in the list item: the cid
    task = next(iter(rig.sim.tasks.values()))
    assert task.target_timestamp == ts
    assert task.duration == 20
    marker = await rig.bridge.store.get_json(AUTO_KIND, hit["ticket"])  # type: ignore[union-attr]
    assert marker is not None
    assert marker["task_id"] == task.task_id

    # The same ticket again (a media update, a second poll): no second clip.
    rig.sim.set_media(hit["ticket"], has_video=True, videos_count=1)
    rig.clock.advance(1)
    await rig.run("events")
    await clips.wait_auto_idle()
    assert rig.videoclip_calls() == 1

    await wait_for(
        lambda: any(e["type"] == "clip.requested" for e in rig.receiver.envelopes),
        message="clip.requested of the auto clip",
    )
    requested = [e for e in rig.receiver.envelopes if e["type"] == "clip.requested"]
    assert len(requested) == 1
    assert requested[0]["data"]["task_id"] == task.task_id
    rig.assert_all_valid()


def test_backoff_is_fast_first_then_slow() -> None:
    delays = [check_delay(n) for n in range(10)]
    assert delays[:3] == [5.0, 10.0, 20.0]
    assert delays == sorted(delays)
    assert delays[-1] == 300.0


def test_a_camera_appearing_is_not_a_change_but_a_moving_one_is() -> None:
    base = {"state_code": 0, "cameras": []}
    seen = {"state_code": 0, "cameras": [{"cam_id": "C_F", "state_number": 0}]}
    moved = {"state_code": 0, "cameras": [{"cam_id": "C_F", "state_number": 1}]}
    assert not really_changed(base, seen)
    assert really_changed(seen, moved)
    assert really_changed(seen, {**seen, "state_code": 1})


async def test_auto_request_candidate_survives_a_crash_before_the_request(
    rig_factory: RigFactory,
) -> None:
    rule = {"match": {"min_severity": "severe"}, "duration_s": 20}
    rig = await rig_factory(config={"clips": {"auto_request": [rule]}})
    clips = rig.bridge.clips
    assert clips is not None
    # The worker dies before it gets to the candidate (as in a crash right after the
    # ingest transaction): only the stored candidate remains.
    await clips.stop()
    hit = rig.sim.add_event(type=4, severity_level=3, timestamp=int(rig.clock.now()) - 30)
    rig.clock.advance(1)
    await rig.run("events")
    assert rig.videoclip_calls() == 0

    await rig.restart()  # a new bridge on the same database re-queues the candidate
    clips = rig.bridge.clips
    assert clips is not None
    await clips.wait_auto_idle()
    assert rig.videoclip_calls() == 1
    marker = await rig.bridge.store.get_json(AUTO_KIND, hit["ticket"])  # type: ignore[union-attr]
    assert marker is not None
    # And a further restart does not request it again.
    await rig.restart()
    await rig.bridge.clips.wait_auto_idle()  # type: ignore[union-attr]
    assert rig.videoclip_calls() == 1


async def test_auto_request_queue_overflow_waits_in_the_store_and_is_re_read(
    rig_factory: RigFactory,
) -> None:
    """The in-memory auto-request queue is bounded; candidates past it are not lost:
    they are in the store (written with their event) and read again once it drains."""
    rule = {"match": {"min_severity": "severe"}, "duration_s": 20}
    rig = await rig_factory(config={"clips": {"auto_request": [rule]}})
    own = rig.bridge.clips
    assert own is not None
    await own.stop()  # the app's worker stays out of the way
    tickets = [
        rig.sim.add_event(type=4, severity_level=3, timestamp=int(rig.clock.now()) - 30 + i)[
            "ticket"
        ]
        for i in range(5)
    ]
    rig.clock.advance(1)
    stats = await rig.run("events")
    assert stats.created == 5
    store, client = rig.bridge.store, rig.bridge.client
    assert store is not None
    assert client is not None
    tracker = ClipTracker(rig.settings, store, client, rig.clock, Metrics(), auto_queue_max=2)
    with capture_logs() as logs:
        assert await tracker.requeue_candidates() == 2  # as at a start-up
    assert [e["event"] for e in logs] == ["auto clip queue full; candidates wait in the store"]
    tracker.start()
    try:
        await wait_for(lambda: rig.videoclip_calls() == 5, message="all five auto clips")
        await tracker.wait_auto_idle()
    finally:
        await tracker.stop()
    for ticket in tickets:
        assert await store.get_json(AUTO_KIND, ticket) is not None
    assert rig.videoclip_calls() == 5
