"""Admin API guard rails: bearer auth, 404 when disabled, JSON errors, size limit,
discard confirmation, and the poll trigger."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from bridge_rig import ADMIN_TOKEN, Rig, make_rig

RigFactory = Callable[..., Awaitable[Rig]]

ENDPOINTS = [
    ("POST", "/api/v1/clips"),
    ("GET", "/api/v1/clips/some-task"),
    ("POST", "/api/v1/events/some-ticket/discard"),
    ("POST", "/api/v1/poll"),
]


@pytest.fixture
def rig_factory(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> RigFactory:
    async def factory(**kw: Any) -> Rig:
        return await make_rig(aiohttp_server, aiohttp_client, tmp_path, **kw)

    return factory


def upstream_calls(rig: Rig, prefix: str) -> int:
    return sum(1 for r in rig.sim.requests if r.path.startswith(prefix))


async def test_missing_or_wrong_token_is_401_json_everywhere(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
    ]
    for method, path in ENDPOINTS:
        for headers in bad_headers:
            resp = await rig.client.request(method, path, headers=headers, json={"confirm": True})
            assert resp.status == 401, (method, path, headers)
            assert (await resp.json())["error"]["code"] == "unauthorized"
    assert upstream_calls(rig, "/V2/event/") == 0  # no clip, task or discard call
    assert rig.bridge.events_poller is not None
    assert rig.bridge.events_poller.status.last_run_at is not None  # only start-up polling
    # The right token passes the guard (answers are the handlers' own).
    resp = await rig.client.get("/api/v1/clips/some-task", headers=rig.auth)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await rig.client.get("/api/v1/nothing-here", headers=rig.auth)
    assert resp.status == 404
    assert "error" in await resp.json()
    resp = await rig.client.get("/api/v1/poll", headers=rig.auth)
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_unset_admin_token_makes_the_api_answer_404(rig_factory: RigFactory) -> None:
    rig = await rig_factory(config={"server": {"admin_token": None}})
    for method, path in [*ENDPOINTS, ("GET", "/api/v1/nothing-here")]:
        for headers in ({}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
            resp = await rig.client.request(method, path, headers=headers)
            assert resp.status == 404, (method, path)
            assert (await resp.json())["error"]["code"] == "not_found"
    assert (await rig.client.get("/healthz")).status == 200


async def test_bodies_over_the_size_limit_are_413_json(rig_factory: RigFactory) -> None:
    rig = await rig_factory(config={"server": {"max_body_bytes": 2048}})
    body = json.dumps({"file_name": "x" * 4096})
    resp = await rig.post_clip(body)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "body_too_large"
    assert rig.videoclip_calls() == 0


async def test_discard_requires_confirm_then_proxies_once(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    item = rig.sim.add_event(timestamp=int(rig.clock.now()) - 5)
    path = f"/api/v1/events/{item['ticket']}/discard"
    for body in ("", "{}", '{"confirm": false}', '{"confirm": "yes"}', '{"confirm": 1}'):
        headers = {**rig.auth, "Content-Type": "application/json"}
        resp = await rig.client.post(path, data=body, headers=headers)
        assert resp.status == 400, body
        error = (await resp.json())["error"]
        assert error["field"] in ("confirm", "body"), body
    assert upstream_calls(rig, "/V2/event/discard") == 0

    resp = await rig.client.post(path, json={"confirm": True}, headers=rig.auth)
    assert resp.status == 200
    assert await resp.json() == {"ticket": item["ticket"], "discarded": True}
    assert upstream_calls(rig, "/V2/event/discard") == 1
    assert rig.sim.item(item["ticket"]) is None

    unknown = "00000000-0000-4000-8000-000000000000"  # well-formed, not the vendor's
    resp = await rig.client.post(
        f"/api/v1/events/{unknown}/discard", json={"confirm": True}, headers=rig.auth
    )
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_poll_endpoint_runs_the_events_poll_and_answers_its_counts(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    for _ in range(3):
        rig.sim.add_event(timestamp=int(rig.clock.now()) - 5)
    rig.clock.advance(1)
    resp = await rig.client.post("/api/v1/poll", headers=rig.auth)
    assert resp.status == 200
    counts = await resp.json()
    assert counts["created"] == 3
    assert counts["fetched"] == 3
    resp = await rig.client.post("/api/v1/poll", headers=rig.auth)
    assert (await resp.json())["created"] == 0
