"""The upstream simulator, exercised over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import wait_for
from pytest_aiohttp import AiohttpClient, AiohttpServer

from bridge.clock import FakeClock
from bridge.simulator import FaultSpec, Simulator, SimulatorConfig
from bridge.simulator.data import CATEGORIES, TYPES_BY_CODE

HEADERS = {"X-Api-Key": "sim-key", "Authorization": "Bearer sim-token"}
Client = TestClient[web.Request, web.Application]
MakeSim = Callable[..., Awaitable[tuple[Simulator, Client]]]


@pytest.fixture
def make_sim(aiohttp_client: AiohttpClient, fake_clock: FakeClock) -> MakeSim:
    """A simulator on the fake clock (no live events unless `rate` is given) and a client."""

    async def make(**overrides: Any) -> tuple[Simulator, Client]:
        config = SimulatorConfig(**{"seed": 7, "rate": 0.0, **overrides})
        sim = Simulator(config, clock=fake_clock)
        return sim, await aiohttp_client(sim.app())

    return make


async def call(
    client: Client,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, Any]]:
    async with client.request(
        method, path, headers=HEADERS if headers is None else headers, **kwargs
    ) as r:
        return r.status, await r.json()


async def events(client: Client, **params: Any) -> dict[str, Any]:
    status, body = await call(
        client, "GET", "/V2/events", params={k: str(v) for k, v in params.items()}
    )
    assert status == 200, body
    assert body["result"] is True
    return body


def all_time(sim: Simulator) -> dict[str, int]:
    return {"since": int(sim.now()) - 2 * 86400, "until": int(sim.now()) + 86400}


# ---- auth ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Api-Key": "wrong", "Authorization": "Bearer sim-token"},
        {"X-Api-Key": "sim-key"},
        {"X-Api-Key": "sim-key", "Authorization": "Bearer wrong"},
        {"X-Api-Key": "sim-key", "Authorization": "sim-token"},
    ],
    ids=["nothing", "wrong-key", "no-token", "wrong-token", "no-scheme"],
)
async def test_bad_credentials_get_401_envelope(make_sim: MakeSim, headers: dict[str, str]) -> None:
    sim, client = await make_sim()
    status, body = await call(client, "GET", "/V2/events", headers=headers, params=all_time(sim))
    assert status == 401
    assert body["result"] is False
    assert body["code"] != "S00000"
    assert body["doc_version"] == "latest"
    assert body["uq"]


async def test_login_returns_token_and_fleets(make_sim: MakeSim) -> None:
    _, client = await make_sim()
    key_only = {"X-Api-Key": "sim-key"}
    creds = {"email": "ops@example.com", "password": "sim-password", "type": "email"}
    status, body = await call(client, "POST", "/V2/auth", headers=key_only, json=creds)
    assert status == 200
    assert body["code"] == "S00000"
    assert body["data"]["token"] == "sim-token"
    assert {"depth", "id", "name"} <= set(body["data"]["fleets"][0])

    bad = {**creds, "password": "nope-nope"}
    status, body = await call(client, "POST", "/V2/auth", headers=key_only, json=bad)
    assert (status, body["result"]) == (401, False)

    status, _ = await call(client, "POST", "/V2/auth", headers={}, json=creds)
    assert status == 401  # the API key is still required


async def test_token_switch_issues_new_token_and_revokes_old(make_sim: MakeSim) -> None:
    sim, client = await make_sim()
    fleet_id = sim.FLEETS[1]["id"]
    status, body = await call(
        client, "POST", "/V2/auth/token-switch", data=aiohttp.FormData({"fleet_id": str(fleet_id)})
    )
    assert status == 200
    new = body["data"]["token"]
    assert new == f"sim-token-f{fleet_id}"

    status, _ = await call(client, "GET", "/V2/auth/token-verify")
    assert status == 401
    new_headers = {"X-Api-Key": "sim-key", "Authorization": f"Bearer {new}"}
    status, body = await call(client, "GET", "/V2/auth/token-verify", headers=new_headers)
    assert (status, body["result"]) == (200, True)


async def test_revoked_token_works_again_after_login(make_sim: MakeSim) -> None:
    sim, client = await make_sim()
    assert (await call(client, "GET", "/V2/auth/token-verify"))[0] == 200
    sim.revoke_token()
    assert (await call(client, "GET", "/V2/auth/token-verify"))[0] == 401
    creds = {"email": "a@b.c", "password": "sim-password", "type": "email"}
    status, _ = await call(client, "POST", "/V2/auth", headers={"X-Api-Key": "sim-key"}, json=creds)
    assert status == 200
    assert (await call(client, "GET", "/V2/auth/token-verify"))[0] == 200


async def test_header_names_and_raw_token_are_configurable(make_sim: MakeSim) -> None:
    _, client = await make_sim(api_key_header="X-Key", auth_header="X-Token", auth_scheme="")
    headers = {"X-Key": "sim-key", "X-Token": "sim-token"}
    status, _ = await call(client, "GET", "/V2/auth/token-verify", headers=headers)
    assert status == 200
    assert (await call(client, "GET", "/V2/auth/token-verify"))[0] == 401


# ---- the event list -----------------------------------------------------------------


async def test_envelope_and_count_is_total_not_page(make_sim: MakeSim) -> None:
    sim, client = await make_sim(backlog=30)
    body = await events(client, **all_time(sim), limit=7)
    assert {"uq", "doc_version", "result", "code", "message", "build", "count", "data"} <= set(body)
    assert body["code"] == "S00000"
    assert body["count"] == 30
    assert len(body["data"]) == 7
    assert body["uq"] != (await events(client, **all_time(sim)))["uq"]


async def test_list_item_has_every_vendor_field(make_sim: MakeSim) -> None:
    sim, client = await make_sim(backlog=5)
    item = (await events(client, **all_time(sim)))["data"][0]
    documented = {
        "asset_info", "car_id", "clicked_count", "device_cid", "driver_avatar", "driver_id",
        "driver_name", "driver_status", "expired", "expiry", "is_new", "lat", "lng", "name",
        "recording_id", "severity_level", "tag", "ticket", "ticket_linked", "timestamp",
        "trip_id", "type", "type_name", "upload_status", "uuid", "video_uploaded",
        "videos_count", "videos_total_count",
    }  # fmt: skip
    assert documented <= set(item)
    assert set(item["asset_info"]) == {"uploading", "has_video"}
    assert item["severity_level"] in (1, 2, 3)


async def test_since_until_are_required_and_integers(make_sim: MakeSim) -> None:
    _, client = await make_sim()
    for params in ({"until": "10"}, {"since": "10"}, {"since": "x", "until": "10"}):
        status, body = await call(client, "GET", "/V2/events", params=params)
        assert (status, body["result"]) == (400, False), params


async def test_since_until_inclusive_at_both_ends(make_sim: MakeSim) -> None:
    sim, client = await make_sim()
    t = int(sim.now()) - 1000
    inside = [sim.add_event(timestamp=t)["ticket"], sim.add_event(timestamp=t + 10)["ticket"]]
    sim.add_event(timestamp=t - 1)
    sim.add_event(timestamp=t + 11)
    body = await events(client, since=t, until=t + 10, order="ASC", limit=10)
    assert [i["ticket"] for i in body["data"]] == inside
    assert body["count"] == 2


async def test_order_and_stable_tie_break(make_sim: MakeSim) -> None:
    sim, client = await make_sim()
    t = int(sim.now()) - 100
    tickets = [sim.add_event(timestamp=t + (i // 3))["ticket"] for i in range(6)]
    asc = await events(client, since=t, until=t + 5, order="ASC", limit=10)
    desc = await events(client, since=t, until=t + 5, order="DESC", limit=10)
    assert [i["ticket"] for i in asc["data"]] == tickets
    assert [i["ticket"] for i in desc["data"]] == tickets[::-1]


@pytest.mark.parametrize("order", ["ASC", "DESC"])
async def test_paging_a_backlog_returns_each_ticket_once(make_sim: MakeSim, order: str) -> None:
    sim, client = await make_sim(backlog=1000)
    window = {"since": int(sim.now()) - 86400, "until": int(sim.now())}
    seen: list[str] = []
    stamps: list[int] = []
    for offset in range(0, 1100, 100):
        body = await events(client, **window, sort="time", order=order, offset=offset, limit=100)
        assert body["count"] == 1000
        seen += [i["ticket"] for i in body["data"]]
        stamps += [i["timestamp"] for i in body["data"]]
    assert len(seen) == 1000
    assert len(set(seen)) == 1000
    assert stamps == sorted(stamps, reverse=order == "DESC")
    assert all(window["since"] <= s <= window["until"] for s in stamps)


async def test_default_paging_is_offset_0_limit_5(make_sim: MakeSim) -> None:
    sim, client = await make_sim(backlog=20)
    assert len((await events(client, **all_time(sim)))["data"]) == 5


async def test_list_filters(make_sim: MakeSim) -> None:
    sim, client = await make_sim(backlog=400)
    window = all_time(sim)
    every = sim.events

    body = await events(client, **window, type="4,22", limit=1000)
    assert body["count"] == sum(e.type_code in (4, 22) for e in every) > 0
    assert {i["type"] for i in body["data"]} <= {4, 22}

    a, b = sim.devices[0], sim.devices[1]
    body = await events(client, **window, device_cids=f"{a.device_cid},{b.device_cid}", limit=1000)
    assert body["count"] == sum(e.device in (a, b) for e in every) > 0
    assert {i["device_cid"] for i in body["data"]} <= {a.device_cid, b.device_cid}

    body = await events(client, **window, serial_number=a.serial_number, limit=1000)
    assert body["count"] == sum(e.device is a for e in every) > 0
    assert {i["device_cid"] for i in body["data"]} == {a.device_cid}

    first_name = a.driver_name.split()[0].upper()  # case-insensitive substring
    body = await events(client, **window, keyword=first_name, limit=1000)
    assert body["count"] == sum(first_name.lower() in e.item["driver_name"].lower() for e in every)
    assert all(first_name.lower() in i["driver_name"].lower() for i in body["data"])
    body = await events(client, **window, keyword=a.vehicle_name.lower(), limit=1000)
    assert {i["device_cid"] for i in body["data"]} == {a.device_cid}


async def test_bad_filter_values_are_400(make_sim: MakeSim) -> None:
    sim, client = await make_sim()
    for extra in ({"type": "x"}, {"order": "UP"}, {"sort": "severity"}, {"limit": "-1"}):
        status, body = await call(client, "GET", "/V2/events", params={**all_time(sim), **extra})
        assert (status, body["result"]) == (400, False), extra


# ---- the live world -----------------------------------------------------------------


async def test_live_events_arrive_with_the_clock(make_sim: MakeSim, fake_clock: FakeClock) -> None:
    sim, client = await make_sim(rate=1.0, late_share=0.0)
    window = {"since": int(sim.now()), "until": int(sim.now()) + 3600}
    assert (await events(client, **window))["count"] == 0
    fake_clock.advance(120)
    count = (await events(client, **window))["count"]
    assert 60 < count < 200  # Poisson, mean 120
    fake_clock.advance(120)
    assert (await events(client, **window))["count"] > count


async def test_late_events_are_visible_only_from_arrival(
    make_sim: MakeSim, fake_clock: FakeClock
) -> None:
    sim, client = await make_sim(rate=0.5, late_share=1.0)
    window = {"since": int(sim.now()) - 3600, "until": int(sim.now()) + 3600, "limit": 100}
    visible: dict[str, float] = {}  # ticket -> when it was first seen
    for _ in range(60):
        fake_clock.advance(1)
        for item in (await events(client, **window))["data"]:
            visible.setdefault(item["ticket"], sim.now())
    assert visible
    for event in sim.events:
        lateness = event.arrived_at - event.timestamp
        assert 59 <= lateness <= 601
        # First seen in the first poll after it arrived, never before.
        assert event.arrived_at <= visible[event.ticket] < event.arrived_at + 1
        assert event.timestamp < visible[event.ticket] - 59


async def test_video_becomes_available_after_media_delay(
    make_sim: MakeSim, fake_clock: FakeClock
) -> None:
    sim, client = await make_sim(rate=0.5, video_share=1.0, late_share=0.0, media_delay_s=(30, 30))
    fake_clock.advance(10)
    pending = sim.events
    assert pending
    for event in pending:
        assert event.item["asset_info"] == {"has_video": False, "uploading": True}
        assert event.item["videos_count"] == 0
        assert event.item["videos_total_count"] > 0
    ticket = pending[0].ticket
    status, body = await call(client, "POST", "/V2/event/GetVideoDetail", data={"ticket": ticket})
    assert (status, body["data"]["videos"]) == (200, [])

    fake_clock.advance(31)
    body = await events(client, **all_time(sim), limit=1000)
    by_ticket = {i["ticket"]: i for i in body["data"]}
    for event in pending:
        item = by_ticket[event.ticket]
        assert item["asset_info"] == {"has_video": True, "uploading": False}
        assert item["videos_count"] == item["videos_total_count"]
    status, body = await call(client, "POST", "/V2/event/GetVideoDetail", data={"ticket": ticket})
    videos = body["data"]["videos"]
    assert len(videos) == by_ticket[ticket]["videos_total_count"]
    assert {"cam_id", "url", "duration", "expires_at"} <= set(videos[0])
    async with client.get(videos[0]["url"].split(str(client.server.port), 1)[1]) as r:
        assert r.status == 200
        assert r.content_type == "video/mp4"


async def test_backlog_media_is_settled_and_set_media_overrides(make_sim: MakeSim) -> None:
    sim, client = await make_sim(backlog=50)
    assert all(not e.item["asset_info"]["uploading"] for e in sim.events)
    item = sim.add_event(video=False)
    assert item["asset_info"]["has_video"] is False
    sim.set_media(item["ticket"], has_video=True, videos_count=2)
    got = sim.item(item["ticket"])
    assert got is not None
    assert got["asset_info"]["has_video"] is True
    assert got["videos_count"] == 2
    _, body = await call(
        client, "POST", "/V2/event/GetVideoDetail", data={"ticket": item["ticket"]}
    )
    assert len(body["data"]["videos"]) == 2


async def test_video_urls_are_signed_anew_on_every_call_and_calls_are_counted(
    make_sim: MakeSim,
) -> None:
    sim, client = await make_sim()
    item = sim.add_event(video=True, media_delay_s=0)
    ticket = item["ticket"]
    first, second = [
        (await call(client, "POST", "/V2/event/GetVideoDetail", data={"ticket": ticket}))[1]
        for _ in range(2)
    ]
    cams = [v["cam_id"] for v in first["data"]["videos"]]
    assert cams == [v["cam_id"] for v in second["data"]["videos"]]
    assert cams
    for a, b in zip(first["data"]["videos"], second["data"]["videos"], strict=True):
        assert "signature=" in a["url"]
        assert a["url"] != b["url"]  # a new signature, same camera and file
        assert a["url"].split("signature=")[0] == b["url"].split("signature=")[0]
        async with client.get(b["url"].split(str(client.server.port), 1)[1]) as r:
            assert r.status == 200
    assert sim.video_detail_calls == {ticket: 2}
    assert sim.peak_in_flight["/V2/event/GetVideoDetail"] == 1
    assert sim.in_flight["/V2/event/GetVideoDetail"] == 0

    # A queued fault fails the next call; it is in `requests` but not an answer.
    sim.queue_faults("500", path_prefix="/V2/event/GetVideoDetail")
    status, _ = await call(client, "POST", "/V2/event/GetVideoDetail", data={"ticket": ticket})
    assert status == 500
    assert sim.video_detail_calls == {ticket: 2}
    assert sum(r.path == "/V2/event/GetVideoDetail" for r in sim.requests) == 3

    # A ticket's videos can be made to fail until it is taken out of the set.
    sim.failing_video_details.add(ticket)
    status, body = await call(client, "POST", "/V2/event/GetVideoDetail", data={"ticket": ticket})
    assert (status, body["result"]) == (500, False)
    sim.failing_video_details.discard(ticket)
    status, _ = await call(client, "POST", "/V2/event/GetVideoDetail", data={"ticket": ticket})
    assert status == 200
    assert sim.video_detail_calls == {ticket: 4}


# ---- detail, discard ------------------------------------------------------------------


async def test_detail_v2_is_an_array_with_the_item(make_sim: MakeSim) -> None:
    sim, client = await make_sim()
    item = sim.add_event(type=1, severity_level=3)
    status, body = await call(
        client, "GET", "/V2/event/detailV2", params={"ticket": item["ticket"]}
    )
    assert status == 200
    assert isinstance(body["data"], list)
    detail = body["data"][0]
    assert detail["ticket"] == item["ticket"]
    assert (detail["type"], detail["type_name"], detail["severity_level"]) == (1, "Impact", 3)
    assert detail["serial_number"] == sim.device(item["device_cid"]).serial_number  # type: ignore[union-attr]
    status, body = await call(client, "GET", "/V2/event/detailV2", params={"ticket": "nope"})
    assert (status, body["result"]) == (404, False)


async def test_discard_removes_the_event(make_sim: MakeSim) -> None:
    sim, client = await make_sim(backlog=10)
    ticket = sim.events[3].ticket
    status, body = await call(client, "POST", "/V2/event/discard", data={"ticket": ticket})
    assert (status, body["result"]) == (200, True)
    body = await events(client, **all_time(sim), limit=100)
    assert body["count"] == 9
    assert ticket not in {i["ticket"] for i in body["data"]}
    assert sim.item(ticket) is None
    status, _ = await call(client, "GET", "/V2/event/detailV2", params={"ticket": ticket})
    assert status == 404
    status, _ = await call(client, "POST", "/V2/event/discard", data={"ticket": ticket})
    assert status == 404


# ---- clip tasks ---------------------------------------------------------------------


def two_camera_device(sim: Simulator) -> Any:
    return next(d for d in sim.devices if len(d.cameras) >= 2)


async def request_clip(client: Client, sn: str, **body: Any) -> tuple[int, dict[str, Any]]:
    payload = {"cam_id": "ALL", "file_name": "clip1", "target_timestamp": 1_763_999_000, **body}
    return await call(client, "POST", f"/V2/event/videoClip/{sn}", json=payload)


async def task_result(client: Client, task_id: str) -> dict[str, Any]:
    status, body = await call(client, "GET", f"/V2/event/taskResult/{task_id}")
    assert status == 200, body
    data: dict[str, Any] = body["data"]
    return data


async def test_clip_task_runs_to_success(make_sim: MakeSim, fake_clock: FakeClock) -> None:
    sim, client = await make_sim(clip_step_s=5)
    device = two_camera_device(sim)
    status, body = await request_clip(client, device.serial_number, duration_in_seconds=29)
    assert status == 200
    task_id = body["data"]["task_id"]

    states = []
    for _ in range(5):
        result = await task_result(client, task_id)
        states.append(result["task_state"])
        numbers = {p["state_number"] for p in result["last_ack_message"]["progress_status"]}
        assert numbers == {{0: 0, 1: 1, 4: 2, 5: 5, 2: 6}[result["task_state"]]}
        fake_clock.advance(5)
    assert states == [0, 1, 4, 5, 2]

    assert len(result["process_history"]) == 5
    ack = result["last_ack_message"]
    assert {"code", "desc", "state", "report_at", "state_desc", "progress_status"} <= set(ack)
    assert {p["camId"] for p in ack["progress_status"]} == set(device.cameras)
    assert result["duration_in_seconds"] == 30  # rounded up to even
    ticket = result["ticket"]
    assert ticket
    listed = await events(client, since=1_763_999_000, until=1_763_999_000, limit=10)
    assert [i["ticket"] for i in listed["data"]] == [ticket]
    status, body = await call(client, "POST", "/V2/event/GetVideoDetail", data={"ticket": ticket})
    assert {v["cam_id"] for v in body["data"]["videos"]} == set(device.cameras)


async def test_queued_failure_ends_failed_with_camera_code(
    make_sim: MakeSim, fake_clock: FakeClock
) -> None:
    sim, client = await make_sim(clip_step_s=5)
    device = two_camera_device(sim)
    sim.fail_next_clips("D_E20003")
    _, body = await request_clip(client, device.device_cid, cam_id="C_F")
    fake_clock.advance(60)
    result = await task_result(client, body["data"]["task_id"])
    assert result["task_state"] == 3
    assert result["last_ack_message"]["code"] == "D_E20003"
    (progress,) = result["last_ack_message"]["progress_status"]
    assert (progress["camId"], progress["state_number"]) == ("C_F", 3)
    assert result["ticket"] is None

    # Only the next one failed.
    _, body = await request_clip(client, device.serial_number, cam_id="C_F")
    fake_clock.advance(60)
    assert (await task_result(client, body["data"]["task_id"]))["task_state"] == 2


async def test_one_failing_camera_of_all_is_partial_success(
    make_sim: MakeSim, fake_clock: FakeClock
) -> None:
    sim, client = await make_sim(clip_step_s=5)
    device = two_camera_device(sim)
    sim.fail_next_clips("D_E20001", cam_id="C_I")
    _, body = await request_clip(client, device.serial_number, cam_id="ALL")
    fake_clock.advance(60)
    result = await task_result(client, body["data"]["task_id"])
    assert result["task_state"] == 6
    numbers = {p["camId"]: p["state_number"] for p in result["last_ack_message"]["progress_status"]}
    assert numbers["C_I"] == 4  # video not found
    assert numbers["C_F"] == 6
    _, body = await call(
        client, "POST", "/V2/event/GetVideoDetail", data={"ticket": result["ticket"]}
    )
    assert "C_I" not in {v["cam_id"] for v in body["data"]["videos"]}


@pytest.mark.parametrize(
    ("sn_ok", "body", "status"),
    [
        (True, {"file_name": "../x"}, 400),
        (True, {"file_name": "a:b"}, 400),
        (True, {"file_name": "a&b"}, 400),
        (True, {"file_name": 'say"hi'}, 400),
        (True, {"file_name": ""}, 400),
        (True, {"duration_in_seconds": 0}, 400),
        (True, {"duration_in_seconds": 86401}, 400),
        (True, {"cam_id": ""}, 400),
        (True, {"target_timestamp": "soon"}, 400),
        (False, {}, 404),
    ],
)
async def test_video_clip_validation(
    make_sim: MakeSim, sn_ok: bool, body: dict[str, Any], status: int
) -> None:
    sim, client = await make_sim()
    sn = sim.devices[0].serial_number if sn_ok else "NOPE"
    got, answer = await request_clip(client, sn, **body)
    assert (got, answer["result"]) == (status, False)
    assert sim.tasks == {}


async def test_storage_list_shows_tasks_with_filters(
    make_sim: MakeSim, fake_clock: FakeClock
) -> None:
    sim, client = await make_sim(clip_step_s=5)
    a, b = sim.devices[0], sim.devices[1]
    t0 = int(sim.now())
    _, first = await request_clip(client, a.serial_number, cam_id="C_F", file_name="alpha")
    fake_clock.advance(100)
    _, second = await request_clip(client, b.serial_number, cam_id="C_F", file_name="beta")
    window = {"since": t0, "until": int(sim.now())}

    async def storage(**params: Any) -> dict[str, Any]:
        query = {k: str(v) for k, v in {**window, **params}.items()}
        status, body = await call(client, "GET", "/V2/event/StorageList", params=query)
        assert status == 200, body
        return body

    body = await storage(sort="uploadDate", order="ASC", limit=10)
    assert body["count"] == 2
    ids = [i["task_id"] for i in body["data"]]
    assert ids == [first["data"]["task_id"], second["data"]["task_id"]]
    item = body["data"][0]
    expected = {"task_id", "task_state", "device_cid", "event_name", "expired", "left_days",
                "lat", "lng", "video_id", "tag", "trip_id", "ticket", "last_ack_message",
                "uploadDate"}  # fmt: skip
    assert expected <= set(item)
    assert (item["task_state"], item["event_name"]) == (2, "alpha")
    assert item["ticket"] is not None

    assert [i["task_id"] for i in (await storage(order="DESC", limit=10))["data"]] == ids[::-1]
    assert (await storage(task_state_filter="0,1"))["count"] == 1  # the second just started
    assert (await storage(serial_number=b.serial_number))["data"][0]["event_name"] == "beta"
    assert (await storage(keyword="ALP"))["count"] == 1
    assert (await storage(type="28"))["count"] == 0
    assert (await storage(since=t0 + 1))["count"] == 1
    assert len((await storage(offset=1, limit=1))["data"]) == 1


# ---- the safety report --------------------------------------------------------------


async def test_safety_report_counts_match_events(make_sim: MakeSim) -> None:
    sim, client = await make_sim(backlog=500)
    since, until = int(sim.now()) - 43200, int(sim.now())
    params = {"since": str(since), "until": str(until), "tz": "America/New_York"}
    status, body = await call(client, "GET", "/V2/analytics/safety", params=params)
    assert status == 200
    data = body["data"]

    window = [e for e in sim.events if since <= e.timestamp <= until]
    expected = {c: 0 for c in CATEGORIES}
    for event in window:
        category = TYPES_BY_CODE[event.type_code].category
        if category:
            expected[category] += 1
    got = {c["category"]: c["count"] for c in data["summary"]["event_category"]}
    assert got == expected
    assert sum(expected.values()) > 0
    assert data["summary"]["trip"]["total_trips"] == len({e.item["trip_id"] for e in window})

    new_york = ZoneInfo("America/New_York")
    per_day: Counter[tuple[str, str, int]] = Counter()
    for event in window:
        category = TYPES_BY_CODE[event.type_code].category
        if category:
            day = datetime.fromtimestamp(event.timestamp, new_york).date().isoformat()
            per_day[category, day, event.type_code] += 1
    got_per_day: Counter[tuple[str, str, int]] = Counter()
    for trend in data["trend"]:
        for day in trend["events"]:
            for t in day["types"]:
                got_per_day[trend["trend_type"], day["date"], t["type"]] += t["count"]
            assert sum(day["severity"].values()) == sum(t["count"] for t in day["types"])
    assert got_per_day == per_day
    # 04:00-16:00 UTC on 11-24 starts on 11-23 in New York: grouping honours `tz`.
    assert {day for _, day, _ in got_per_day} == {"2025-11-23", "2025-11-24"}

    status, body = await call(
        client, "GET", "/V2/analytics/safety", params={**params, "tz": "Mars/Olympus"}
    )
    assert (status, body["result"]) == (400, False)


# ---- faults -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "retry_after"),
    [("500", 500, None), ("503", 503, "2"), ("429", 429, "2")],
)
async def test_status_faults(
    make_sim: MakeSim, kind: str, status: int, retry_after: str | None
) -> None:
    sim, client = await make_sim(faults=FaultSpec(retry_after=2))
    sim.queue_faults(kind)
    async with client.get("/V2/auth/token-verify", headers=HEADERS) as r:
        assert r.status == status
        assert r.headers.get("Retry-After") == retry_after
        body = await r.json()
    assert body["result"] is False
    assert body["code"] != "S00000"
    assert (await call(client, "GET", "/V2/auth/token-verify"))[0] == 200  # only once


async def test_result_false_fault(make_sim: MakeSim) -> None:
    sim, client = await make_sim()
    sim.queue_faults("result_false")
    status, body = await call(client, "GET", "/V2/auth/token-verify")
    assert (status, body["result"]) == (200, False)
    assert body["code"] != "S00000"


async def test_malformed_fault(make_sim: MakeSim) -> None:
    sim, client = await make_sim()
    sim.queue_faults("malformed")
    async with client.get("/V2/auth/token-verify", headers=HEADERS) as r:
        assert r.status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(await r.text())


async def test_drop_fault_closes_the_connection(make_sim: MakeSim) -> None:
    sim, client = await make_sim()
    sim.queue_faults("drop")
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get("/V2/auth/token-verify", headers=HEADERS) as r:
            await r.read()
    assert (await call(client, "GET", "/V2/auth/token-verify"))[0] == 200


async def test_slow_fault_answers_late_but_normally(make_sim: MakeSim) -> None:
    sim, client = await make_sim(faults=FaultSpec(slow_s=0.3))
    sim.queue_faults("slow")
    started = time.monotonic()
    status, body = await call(client, "GET", "/V2/auth/token-verify")
    assert (status, body["result"]) == (200, True)
    assert time.monotonic() - started >= 0.3


async def test_timeout_fault_makes_the_client_time_out(make_sim: MakeSim) -> None:
    sim, client = await make_sim(faults=FaultSpec(timeout_s=2.0))
    sim.queue_faults("timeout")
    with pytest.raises(asyncio.TimeoutError):
        async with client.get(
            "/V2/auth/token-verify", headers=HEADERS, timeout=aiohttp.ClientTimeout(total=0.2)
        ) as r:
            await r.read()


async def test_queued_faults_apply_in_order_to_matching_paths(make_sim: MakeSim) -> None:
    sim, client = await make_sim()
    sim.queue_faults("503", "500", path_prefix="/V2/event/")
    assert (await call(client, "GET", "/V2/auth/token-verify"))[0] == 200
    params = {"ticket": "x"}
    assert (await call(client, "GET", "/V2/event/detailV2", params=params))[0] == 503
    assert (await call(client, "GET", "/V2/event/detailV2", params=params))[0] == 500
    assert (await call(client, "GET", "/V2/event/detailV2", params=params))[0] == 404
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.queue_faults("teapot")


async def test_fault_rates_draw_from_the_seeded_rng(
    aiohttp_client: AiohttpClient, fake_clock: FakeClock
) -> None:
    async def statuses(seed: int) -> list[int]:
        faults = FaultSpec(rates={"500": 0.3, "429": 0.2})
        sim = Simulator(SimulatorConfig(seed=seed, rate=0, faults=faults), clock=fake_clock)
        client = await aiohttp_client(sim.app())
        return [(await call(client, "GET", "/V2/auth/token-verify"))[0] for _ in range(40)]

    first = await statuses(3)
    assert first == await statuses(3)
    assert {200, 429, 500} == set(first)


# ---- determinism, recording, push ---------------------------------------------------


async def test_same_seed_same_tickets() -> None:
    def tickets(seed: int) -> list[str]:
        clock = FakeClock(start=1_764_000_000.0)
        sim = Simulator(SimulatorConfig(seed=seed, backlog=200, rate=1.0), clock=clock)
        clock.advance(30)
        sim.refresh()
        clock.advance(300)
        return [e.ticket for e in sim.events]

    first = tickets(11)
    assert len(first) > 200
    assert first == tickets(11)
    assert first != tickets(12)


async def test_base_time_pins_the_clock() -> None:
    sim = Simulator(SimulatorConfig(seed=1, backlog=10, base_time=1_700_000_000))
    assert abs(sim.now() - 1_700_000_000) < 5
    assert all(1_700_000_000 - 86400 <= e.timestamp <= 1_700_000_000 for e in sim.events)


async def test_requests_are_recorded(make_sim: MakeSim, fake_clock: FakeClock) -> None:
    sim, client = await make_sim()
    await events(client, **all_time(sim), limit=3)
    last = sim.requests[-1]
    assert (last.method, last.path, last.query["limit"]) == ("GET", "/V2/events", "3")
    assert last.time == fake_clock.now()
    assert not any("videoClip" in r.path for r in sim.requests)


async def test_push_posts_vendor_style_webhooks(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, fake_clock: FakeClock
) -> None:
    received: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"status": "success"})

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    server = await aiohttp_server(receiver)
    config = SimulatorConfig(seed=5, rate=0, push_url=str(server.make_url("/hook")))
    sim = Simulator(config, clock=fake_clock)
    client = await aiohttp_client(sim.app())

    async def parked() -> None:
        # The push loop only wakes on an advance if it is already asleep on the clock.
        await wait_for(lambda: fake_clock.sleepers > 0, message="push loop asleep")

    item = sim.add_event(type=5, video=True, media_delay_s=30, severity_level=1)
    await parked()
    fake_clock.advance(1)
    await wait_for(lambda: len(received) >= 1, message="EVENT_TRIGGERED")
    body = received[0]
    assert (body["type"], body["hookName"]) == ("Notification", "EVENT_TRIGGERED")
    assert body["messageId"]
    assert body["signature"]
    assert body["kid"]
    message = json.loads(body["message"])
    assert message["ticket"] == item["ticket"]
    assert (message["event_type"], message["event_name"]) == (5, "Start Up")
    assert message["severity_level"] == "Minor"
    assert isinstance(message["gps"]["lat"], str)

    await parked()
    fake_clock.advance(30)
    await wait_for(lambda: len(received) >= 2, message="ASSET_UPLOADED")
    assert received[1]["hookName"] == "ASSET_UPLOADED"
    assert json.loads(received[1]["message"])["video"]["count"] > 0

    await request_clip(client, sim.devices[0].serial_number, cam_id="C_F")
    await parked()
    fake_clock.advance(1)
    await wait_for(
        lambda: any(r["hookName"] == "TASK_UPDATE" for r in received), message="TASK_UPDATE"
    )


async def test_push_to_unreachable_url_does_not_crash(
    aiohttp_client: AiohttpClient, fake_clock: FakeClock, unused_tcp_port: int
) -> None:
    config = SimulatorConfig(seed=5, rate=0, push_url=f"http://127.0.0.1:{unused_tcp_port}/x")
    sim = Simulator(config, clock=fake_clock)
    client = await aiohttp_client(sim.app())
    for _ in range(2):
        sim.add_event()
        await wait_for(lambda: fake_clock.sleepers > 0, message="push loop asleep")
        fake_clock.advance(1)
        await wait_for(lambda: not sim.outbox, message="outbox drained")
    assert (await call(client, "GET", "/V2/auth/token-verify"))[0] == 200


# ---- FaultSpec.parse and the CLI ----------------------------------------------------


def test_faultspec_parse() -> None:
    spec = FaultSpec.parse("500=0.05, 429=0.02,slow=0.1,retry_after=2,slow_s=0.5")
    assert spec.rates == {"500": 0.05, "429": 0.02, "slow": 0.1}
    assert (spec.retry_after, spec.slow_s, spec.timeout_s) == (2.0, 0.5, 60.0)
    assert FaultSpec.parse("") == FaultSpec()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("teapot=0.1", "unknown fault kind 'teapot'"),
        ("500", "expected KIND=RATE"),
        ("500=lots", "not a number"),
        ("500=1.5", "between 0 and 1"),
        ("500=0.6,503=0.6", "more than 1"),
        ("slow_s=-1", "slow_s"),
    ],
)
def test_faultspec_parse_rejects_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultSpec.parse(spec)


async def test_cli_simulate_serves_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "simulate", "--port", "0", "--backlog", "10",
        "--seed", "1", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert "api_key=sim-key" in line
        assert "token=sim-token" in line
        url = line.split()[3]
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as session:
            params = {"since": "0", "until": "4000000000"}
            async with session.get(f"{url}/V2/events", params=params, headers=HEADERS) as r:
                body = await r.json()
        assert body["count"] == 10
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
