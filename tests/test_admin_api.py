"""The admin API of SPEC §7 beyond clips: status, deliveries, retry, resume, test, replay.

Every test drives the real pipeline (simulator → bridge → a real webhook receiver that
verifies signatures) and the bridge's HTTP API, sharing one FakeClock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from bridge_rig import ADMIN_TOKEN, Rig, make_rig
from conftest import wait_for
from envelope_schema import validate_envelope
from webhook_receiver import Behaviour

from bridge.app import BRIDGE
from bridge.clock import utc_iso

RigFactory = Callable[..., Awaitable[Rig]]

# (method, path, JSON body) for every admin endpoint this module covers.
ADMIN_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/status", None),
    ("GET", "/api/v1/deliveries", None),
    ("POST", "/api/v1/deliveries/1/retry", None),
    ("POST", "/api/v1/targets/hook/resume", None),
    ("POST", "/api/v1/targets/hook/test", None),
    ("POST", "/api/v1/replay", {"target": "hook", "since": 0}),
    ("GET", "/api/v1/openapi.json", None),
]


@pytest.fixture
def rig_factory(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> RigFactory:
    async def factory(**kw: Any) -> Rig:
        return await make_rig(aiohttp_server, aiohttp_client, tmp_path, **kw)

    return factory


class Switch:
    """A receiver behaviour the test flips: answers `status` until told otherwise."""

    def __init__(self, status: int) -> None:
        self.status = status

    def __call__(self, _n: int) -> tuple[int, dict[str, str]]:
        return self.status, {}


def behave(rig: Rig, behaviour: Behaviour) -> None:
    rig.receiver.behaviour = behaviour


async def add_events(rig: Rig, n: int) -> None:
    """`n` new events at the vendor, fetched by one poll through the API."""
    for _ in range(n):
        rig.sim.add_event(timestamp=int(rig.clock.now()) - 5)
    rig.clock.advance(1)
    resp = await rig.client.post("/api/v1/poll", headers=rig.auth)
    assert resp.status == 200
    assert (await resp.json())["created"] == n


async def get_json(rig: Rig, path: str, status: int = 200, **params: Any) -> Any:
    resp = await rig.client.get(path, headers=rig.auth, params=params)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def post_json(rig: Rig, path: str, body: Any = None, status: int = 200) -> Any:
    resp = await rig.client.post(path, headers=rig.auth, json=body)
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


async def all_deliveries(rig: Rig, **params: Any) -> list[dict[str, Any]]:
    page = await get_json(rig, "/api/v1/deliveries", limit=1000, **params)
    assert page["next_cursor"] is None
    items: list[dict[str, Any]] = page["items"]
    return items


# --------------------------------------------------------------------------- auth


async def test_every_admin_endpoint_needs_the_right_token(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    for method, path, body in ADMIN_ENDPOINTS:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": ADMIN_TOKEN}):
            resp = await rig.client.request(method, path, headers=headers, json=body)
            assert resp.status == 401, (method, path, headers)
            assert (await resp.json())["error"]["code"] == "unauthorized"
    assert await all_deliveries(rig) == []  # nothing was queued by the refused requests
    # With the right token each answers its own (non-auth) status.
    expected = {
        "/api/v1/status": 200,
        "/api/v1/deliveries": 200,
        "/api/v1/deliveries/1/retry": 404,  # no such delivery
        "/api/v1/targets/hook/resume": 409,  # not paused
        "/api/v1/targets/hook/test": 202,
        "/api/v1/replay": 202,
        "/api/v1/openapi.json": 200,
    }
    for method, path, body in ADMIN_ENDPOINTS:
        resp = await rig.client.request(method, path, headers=rig.auth, json=body)
        assert resp.status == expected[path], (path, await resp.text())
        assert resp.content_type == "application/json"


async def test_unset_token_hides_every_admin_endpoint(rig_factory: RigFactory) -> None:
    rig = await rig_factory(config={"server": {"admin_token": None}})
    for method, path, body in ADMIN_ENDPOINTS:
        resp = await rig.client.request(method, path, headers=rig.auth, json=body)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "not_found"
    assert rig.receiver.requests == 0  # the test endpoint did not run


# --------------------------------------------------------------------------- status


async def test_status_shape_and_values(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    await add_events(rig, 2)
    await wait_for(lambda: len(rig.receiver.envelopes) == 2, message="2 delivered")
    await rig.settle()
    status = await get_json(rig, "/api/v1/status")
    assert set(status) == {"pollers", "targets", "orphaned", "upstream", "replica", "leader"}
    assert status["orphaned"] == {}
    assert status["upstream"] == {"login_failing": False, "login_retry_at": None, "reason": None}
    # One process on SQLite: it holds the poll lease itself.
    assert status["replica"] == rig.client.app[BRIDGE].replica
    assert status["leader"]["replica"] == status["replica"]
    assert status["leader"]["epoch"] == 1
    assert status["leader"]["expires_at"].endswith("Z")
    events = status["pollers"]["events"]
    assert set(events) == {
        "last_run_at",
        "last_success_at",
        "last_error",
        "cursor",
        "lag_s",
        "failing",
        "reason",
        "stale",
    }
    assert events["reason"] is None
    assert events["stale"] is None
    assert events["last_success_at"] == utc_iso(rig.clock.now())
    assert events["last_error"] is None
    assert events["failing"] is False
    assert isinstance(events["lag_s"], float | int)
    assert events["lag_s"] >= 0
    assert events["cursor"].endswith("Z")
    # Every poll job is listed (housekeeping is not); clips has no cursor.
    assert "prune" not in status["pollers"]
    await rig.run("clips")
    clips = (await get_json(rig, "/api/v1/status"))["pollers"]["clips"]
    assert clips["last_success_at"] == utc_iso(rig.clock.now())
    assert clips["cursor"] is None
    assert clips["failing"] is False
    assert set(status["targets"]) == {"hook", "out"}
    hook = status["targets"]["hook"]
    assert hook == {
        "pending": 0,
        "in_flight": 0,
        "dead": 0,
        "paused": False,
        "paused_reason": None,
        "hold_until": None,
        "failing": False,
        "last_error": None,
        "last_status": 200,
        "last_success_at": utc_iso(rig.clock.now()),
        "delivered": 2,
        "reason": None,
    }


# --------------------------------------------------------------------------- deliveries


async def test_deliveries_pagination_covers_every_row_once(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    await add_events(rig, 7)
    await wait_for(lambda: len(rig.receiver.envelopes) == 7, message="7 delivered")
    await wait_for(lambda: len(rig.console_envelopes()) == 7, message="7 printed")
    await rig.settle()
    everything = await all_deliveries(rig)
    assert len(everything) == 14  # 7 notifications x (hook, out)
    ids = [d["id"] for d in everything]
    assert ids == sorted(ids, reverse=True)  # newest first
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = await get_json(rig, "/api/v1/deliveries", **params)
        assert len(page["items"]) <= 3
        seen.extend(d["id"] for d in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert pages == 5
    hook = await all_deliveries(rig, target="hook", state="delivered")
    assert len(hook) == 7
    assert {d["target"] for d in hook} == {"hook"}
    item = hook[0]
    assert set(item) == {
        "id",
        "notification_id",
        "type",
        "target",
        "state",
        "attempts",
        "last_status",
        "last_error",
        "next_attempt_at",
        "created_at",
    }
    assert item["type"] == "event.created"
    assert item["attempts"] == 1
    assert item["last_status"] == 200
    assert item["notification_id"] in {e["id"] for e in rig.receiver.envelopes}
    assert await all_deliveries(rig, state="dead") == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "gone"}, "state"),
        ({"state": ""}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"target": "no/such"}, "target"),
        ({"target": ""}, "target"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "0"}, "cursor"),
        ({"cursor": "9" * 30}, "cursor"),
    ],
)
async def test_deliveries_rejects_bad_parameters_naming_them(
    rig_factory: RigFactory, params: dict[str, str], field: str
) -> None:
    rig = await rig_factory()
    error = (await get_json(rig, "/api/v1/deliveries", status=400, **params))["error"]
    assert error["field"] == field
    assert error["code"] == "invalid_field"


# --------------------------------------------------------------------------- retry


async def test_retry_of_a_dead_delivery_makes_it_arrive(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    switch = Switch(400)  # a permanent failure: dead at once
    behave(rig, switch)
    await add_events(rig, 1)
    await wait_for(
        lambda: rig.bridge.dispatchers["hook"].health.last_status == 400, message="a 400"
    )
    await rig.settle()
    dead = await all_deliveries(rig, state="dead")
    assert len(dead) == 1
    row = dead[0]
    assert (row["target"], row["last_status"], row["attempts"]) == ("hook", 400, 1)
    assert rig.receiver.envelopes == []
    status = await get_json(rig, "/api/v1/status")
    assert status["targets"]["hook"]["dead"] == 1
    # A permanent answer is about one delivery: the receiver is up, the target not failing.
    assert status["targets"]["hook"]["failing"] is False
    assert status["targets"]["hook"]["last_error"] is not None

    # Not dead (the console delivery of the same notification) → 409; unknown → 404.
    (out,) = await all_deliveries(rig, target="out")
    assert (await post_json(rig, f"/api/v1/deliveries/{out['id']}/retry", status=409))["error"][
        "code"
    ] == "not_dead"
    for unknown in ("999999", "abc", "0", "9" * 40):
        await post_json(rig, f"/api/v1/deliveries/{unknown}/retry", status=404)

    switch.status = 200
    answer = await post_json(rig, f"/api/v1/deliveries/{row['id']}/retry")
    assert answer["id"] == row["id"]
    assert answer["state"] in ("pending", "in_flight", "delivered")
    await wait_for(lambda: len(rig.receiver.envelopes) == 1, message="the retried delivery")
    assert rig.receiver.envelopes[0]["id"] == row["notification_id"]
    await rig.settle()
    (after,) = await all_deliveries(rig, target="hook")
    assert after["state"] == "delivered"
    assert after["last_status"] == 200
    await post_json(rig, f"/api/v1/deliveries/{row['id']}/retry", status=409)


# --------------------------------------------------------------------------- resume


async def test_resume_of_a_410_paused_target_makes_its_deliveries_flow(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    switch = Switch(410)
    behave(rig, switch)
    await add_events(rig, 3)
    await wait_for(lambda: rig.bridge.dispatchers["hook"].paused, message="paused on 410")
    await rig.settle()
    hook = (await get_json(rig, "/api/v1/status"))["targets"]["hook"]
    assert hook["paused"] is True
    assert "410" in hook["paused_reason"]
    assert hook["pending"] == 3
    assert rig.receiver.envelopes == []

    switch.status = 200
    assert await post_json(rig, "/api/v1/targets/hook/resume") == {
        "target": "hook",
        "paused": False,
    }
    await wait_for(lambda: len(rig.receiver.envelopes) == 3, message="3 after resume")
    await rig.settle()
    hook = (await get_json(rig, "/api/v1/status"))["targets"]["hook"]
    assert (hook["paused"], hook["pending"], hook["delivered"]) == (False, 0, 3)
    error = (await post_json(rig, "/api/v1/targets/hook/resume", status=409))["error"]
    assert error["code"] == "not_paused"
    await post_json(rig, "/api/v1/targets/nope/resume", status=404)


# --------------------------------------------------------------------------- test


async def test_test_endpoint_sends_one_valid_bridge_test_to_that_target_only(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    answer = await post_json(rig, "/api/v1/targets/hook/test", status=202)
    assert answer["target"] == "hook"
    await wait_for(lambda: len(rig.receiver.envelopes) == 1, message="the test notification")
    env = rig.receiver.envelopes[0]
    validate_envelope(env)
    assert env["id"] == answer["notification_id"]
    assert env["type"] == "bridge.test"
    assert env["data"]["target"] == "hook"
    await rig.settle()
    assert rig.console_envelopes() == []  # the other target got nothing
    rows = await all_deliveries(rig)
    assert [(r["target"], r["type"]) for r in rows] == [("hook", "bridge.test")]

    answer = await post_json(rig, "/api/v1/targets/out/test", status=202)
    await wait_for(lambda: len(rig.console_envelopes()) == 1, message="console test")
    validate_envelope(rig.console_envelopes()[0])
    assert rig.console_envelopes()[0]["id"] == answer["notification_id"]
    assert len(rig.receiver.envelopes) == 1
    await post_json(rig, "/api/v1/targets/nope/test", status=404)


# --------------------------------------------------------------------------- replay


async def test_replay_resends_with_the_original_ids(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    start = rig.clock.now()
    await add_events(rig, 4)
    await wait_for(lambda: len(rig.receiver.envelopes) == 4, message="4 delivered")
    await rig.settle()
    originals = [e["id"] for e in rig.receiver.envelopes]
    rig.clock.advance(60)

    answer = await post_json(
        rig,
        "/api/v1/replay",
        {"target": "hook", "since": utc_iso(start - 1), "until": int(rig.clock.now())},
        status=202,
    )
    assert answer["queued"] == 4
    assert answer["target"] == "hook"
    await wait_for(lambda: len(rig.receiver.envelopes) == 8, message="4 replayed")
    replayed = [e["id"] for e in rig.receiver.envelopes[4:]]
    # Same ids, each once (notifications of one poll share created_at, so their
    # replay order is by id, not necessarily the order of the first delivery).
    assert sorted(replayed) == sorted(originals)
    await rig.settle()
    assert len(rig.console_envelopes()) == 4  # the other target was not replayed to

    # A window before anything was stored queues nothing.
    answer = await post_json(
        rig, "/api/v1/replay", {"target": "hook", "since": 0, "until": start - 10}, status=202
    )
    assert answer["queued"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"since": 0}, "target"),
        ({"target": "nope", "since": 0}, "target"),
        ({"target": "hook"}, "since"),
        ({"target": "hook", "since": "yesterday"}, "since"),
        ({"target": "hook", "since": "2026-01-01T00:00:00"}, "since"),  # no zone
        ({"target": "hook", "since": -1}, "since"),
        ({"target": "hook", "since": True}, "since"),
        ({"target": "hook", "since": 10, "until": 10**12}, "until"),  # past year 9999
        ({"target": "hook", "since": ""}, "since"),
        ({"target": "", "since": 0}, "target"),
        ({"target": "hook", "since": 0, "until": "x"}, "until"),
        ({"target": "hook", "since": 0, "extra": 1}, "extra"),
        ([], "body"),
    ],
)
async def test_replay_rejects_bad_bodies_naming_the_field(
    rig_factory: RigFactory, body: Any, field: str
) -> None:
    rig = await rig_factory()
    error = (await post_json(rig, "/api/v1/replay", body, status=400))["error"]
    assert error["field"] == field, error


async def test_replay_of_an_empty_interval_queues_nothing(rig_factory: RigFactory) -> None:
    # until before since is no error the OpenAPI schema could state: it is empty.
    rig = await rig_factory()
    body = {"target": "hook", "since": 10, "until": 5}
    answer = await post_json(rig, "/api/v1/replay", body, status=202)
    assert answer["queued"] == 0


async def test_replay_body_over_the_size_limit_is_413(rig_factory: RigFactory) -> None:
    rig = await rig_factory(config={"server": {"max_body_bytes": 1024}})
    body = {"target": "hook", "since": 0, "pad": "x" * 4096}
    error = (await post_json(rig, "/api/v1/replay", body, status=413))["error"]
    assert error["code"] == "body_too_large"
