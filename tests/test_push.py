"""The vendor push endpoint: token, size limit, malformed bodies, same de-dup as polling,
and TASK_UPDATE advancing a tracked clip before its next poll."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from bridge_rig import PUSH_PATH, PUSH_TOKEN, Rig, make_rig
from conftest import wait_for
from structlog.testing import capture_logs

from bridge.clock import utc_iso
from bridge.push import MAX_PUSH_BYTES, PUSH_KIND, PushIngest
from bridge.simulator import push as sim_push

RigFactory = Callable[..., Awaitable[Rig]]
PUSH_CONFIG = {"ingest": {"vendor_webhook": {"enabled": True, "token": PUSH_TOKEN}}}


@pytest.fixture
def rig_factory(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> RigFactory:
    async def factory(**kw: Any) -> Rig:
        kw.setdefault("config", PUSH_CONFIG)
        return await make_rig(aiohttp_server, aiohttp_client, tmp_path, **kw)

    return factory


async def push(rig: Rig, body: Any, *, token: str | None = PUSH_TOKEN, **kw: Any) -> Any:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Bridge-Token"] = token
    data = body if isinstance(body, str | bytes | AsyncIterator) else json.dumps(body)
    return await rig.client.post(PUSH_PATH, data=data, headers=headers, **kw)


async def drained(rig: Rig) -> None:
    assert rig.bridge.push is not None
    await rig.bridge.push.wait_idle()
    await rig.settle()


def event_push(rig: Rig, hook: str = "EVENT_TRIGGERED", **overrides: Any) -> tuple[str, Any]:
    item = rig.sim.add_event(timestamp=int(rig.clock.now()) - 10, **overrides)
    event = rig.sim.log.get(item["ticket"])
    assert event is not None
    make = sim_push.event_triggered if hook == "EVENT_TRIGGERED" else sim_push.asset_uploaded
    return item["ticket"], make(rig.sim, event)


@pytest.mark.parametrize("push_first", [True, False], ids=["push-then-poll", "poll-then-push"])
async def test_push_and_poll_of_one_ticket_make_one_event_created(
    rig_factory: RigFactory, push_first: bool
) -> None:
    rig = await rig_factory()
    ticket, body = event_push(rig, video=False)
    rig.clock.advance(1)
    store = rig.bridge.store
    assert store is not None
    if push_first:
        resp = await push(rig, body)
        assert resp.status == 200
        assert await resp.json() == {"status": "success"}
        await drained(rig)
        await wait_for(lambda: rig.receiver.tickets()[ticket] == 1, message="pushed event")
        stats = await rig.run("events")
        assert stats.duplicates == 1
        assert stats.created == 0
    else:
        stats = await rig.run("events")
        assert stats.created == 1
        await wait_for(lambda: rig.receiver.tickets()[ticket] == 1, message="polled event")
        resp = await push(rig, body)
        assert resp.status == 200
    await drained(rig)
    assert await store.count_notifications("event.created") == 1
    assert await store.count_notifications("event.updated") == 0
    await wait_for(lambda: rig.receiver.requests >= 1)
    assert rig.receiver.tickets()[ticket] == 1
    assert rig.receiver.tickets("event.updated")[ticket] == 0
    created = rig.receiver.of_type("event.created")
    assert created[0]["data"]["device"]["cid"] == rig.sim.log.get(ticket).device.device_cid  # type: ignore[union-attr]
    rig.assert_all_valid()


async def test_push_token_is_required_by_header_or_query(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    _, body = event_push(rig)
    for token in (None, "wrong", PUSH_TOKEN + "x"):
        resp = await push(rig, body, token=token)
        assert resp.status == 401, token
        assert (await resp.json())["error"]["code"] == "unauthorized"
    resp = await rig.client.post(f"{PUSH_PATH}?token=nope", json=body)
    assert resp.status == 401
    resp = await rig.client.post(f"{PUSH_PATH}?token={PUSH_TOKEN}", json=body)
    assert resp.status == 200
    await drained(rig)
    await wait_for(lambda: len(rig.receiver.of_type("event.created")) == 1)
    assert await rig.bridge.store.count_notifications("event.created") == 1  # type: ignore[union-attr]


async def test_push_body_over_one_mib_is_413(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    big = json.dumps({"hookName": "GPS_UPDATE", "message": "x" * MAX_PUSH_BYTES})
    resp = await push(rig, big)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "body_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the stream is capped
        for _ in range(17):
            yield b" " * 65536

    resp = await push(rig, chunks())
    assert resp.status == 413


async def test_malformed_pushes_are_400_logged_and_never_break_the_endpoint(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    no_ticket = json.dumps({"timestamp": 1, "event_type": 1})
    bad = [
        "{not json",
        "[]",
        json.dumps({"message": "{}"}),  # no hookName
        json.dumps({"hookName": "EVENT_TRIGGERED", "message": "{oops"}),
        json.dumps({"hookName": "EVENT_TRIGGERED", "message": "[1]"}),
        json.dumps({"hookName": "EVENT_TRIGGERED"}),
        json.dumps({"hookName": "EVENT_TRIGGERED", "message": no_ticket}),
    ]
    with capture_logs() as logs:
        for body in bad:
            resp = await push(rig, body)
            assert resp.status == 400, body
            assert "code" in (await resp.json())["error"]
    refused = [e for e in logs if e["event"] == "vendor push refused"]
    assert len(refused) == len(bad)
    # Unknown hooks are acknowledged and ignored; real pushes still flow.
    resp = await push(rig, {"hookName": "GPS_UPDATE", "message": "{}"})
    assert resp.status == 200
    ticket, body = event_push(rig)
    resp = await push(rig, body)
    assert resp.status == 200
    await drained(rig)
    await wait_for(lambda: list(rig.receiver.tickets()) == [ticket])
    assert await rig.bridge.store.count_notifications() == 1  # type: ignore[union-attr]


async def test_task_update_push_advances_a_tracked_clip_before_the_next_poll(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    device = rig.sim.devices[0]
    resp = await rig.client.post(
        "/api/v1/clips",
        json={
            "serial_number": device.serial_number,
            "cam_id": "C_F",
            "target_timestamp": utc_iso(rig.clock.now() - 60),
            "duration_s": 10,
            "file_name": "pushed",
        },
        headers=rig.auth,
    )
    assert resp.status == 202
    task_id = (await resp.json())["task_id"]
    task = rig.sim.tasks[task_id]
    rig.clock.advance(30)  # the task has finished at the vendor; no clips job runs
    result_calls = sum(1 for r in rig.sim.requests if "/taskResult/" in r.path)
    resp = await push(rig, sim_push.task_update(rig.sim, task, rig.sim.now()))
    assert resp.status == 200
    await wait_for(
        lambda: any(e["type"] == "clip.completed" for e in rig.receiver.envelopes),
        message="clip.completed after the TASK_UPDATE push",
    )
    assert sum(1 for r in rig.sim.requests if "/taskResult/" in r.path) == result_calls + 1
    done = rig.receiver.of_type("clip.completed")[0]["data"]
    assert done["task_id"] == task_id
    assert done["videos"]
    # A TASK_UPDATE for a task we do not track is acknowledged and ignored.
    resp = await push(
        rig, {"hookName": "TASK_UPDATE", "message": json.dumps({"task_id": "unknown"})}
    )
    assert resp.status == 200
    await drained(rig)
    rig.assert_all_valid()


async def test_a_push_answered_200_is_stored_before_the_answer(
    rig_factory: RigFactory, aiohttp_client: Any
) -> None:
    rig = await rig_factory()
    store, ingestor = rig.bridge.store, rig.bridge.ingestor
    assert store is not None
    assert ingestor is not None
    cfg = rig.settings.ingest.vendor_webhook
    # A process whose worker never runs: it dies right after answering.
    dying = PushIngest(cfg, ingestor, None, store)
    app = web.Application()
    app.router.add_post("/push", dying.handle)
    client = await aiohttp_client(app)
    ticket, body = event_push(rig)
    resp = await client.post("/push", json=body, headers={"X-Bridge-Token": PUSH_TOKEN})
    assert resp.status == 200
    assert [key for key, _ in await store.list_json(PUSH_KIND)] != []
    assert await store.count_notifications() == 0

    # The next process finds it, ingests it and forgets it in the same transaction.
    after = PushIngest(cfg, ingestor, None, store)
    assert await after.recover() == 1
    after.start()
    try:
        await after.wait_idle()
    finally:
        await after.stop(1.0)
    assert await store.list_json(PUSH_KIND) == []
    await wait_for(lambda: ticket in rig.receiver.tickets(), message="the pushed event delivered")


async def test_push_queue_is_bounded_by_bytes_with_503_and_retry_after(
    rig_factory: RigFactory, aiohttp_client: Any
) -> None:
    """The queue holds bodies up to a byte budget, not a count: past it the vendor gets
    503 + Retry-After (and retries), and room comes back as the worker drains."""
    rig = await rig_factory()
    assert rig.bridge.ingestor is not None
    bodies = [event_push(rig, video=False) for _ in range(4)]
    sizes = [len(json.dumps(body).encode()) for _, body in bodies]
    cfg = rig.settings.ingest.vendor_webhook
    assert rig.bridge.store is not None
    ingest = PushIngest(
        cfg, rig.bridge.ingestor, None, rig.bridge.store, max_queued_bytes=sum(sizes[:3])
    )
    app = web.Application()
    app.router.add_post("/push", ingest.handle)
    client = await aiohttp_client(app)
    headers = {"X-Bridge-Token": PUSH_TOKEN, "Content-Type": "application/json"}
    rig.clock.advance(1)
    with capture_logs() as logs:
        for _, body in bodies[:3]:  # the worker is not started: nothing drains yet
            assert (await client.post("/push", json=body, headers=headers)).status == 200
        for _ in range(2):
            resp = await client.post("/push", json=bodies[3][1], headers=headers)
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "5"
            assert (await resp.json())["error"]["code"] == "unavailable"
    assert ingest.queued_bytes == sum(sizes[:3])
    assert len([e for e in logs if e["event"] == "vendor push queue full"]) == 1
    ingest.start()
    try:
        await ingest.wait_idle()
        assert ingest.queued_bytes == 0
        assert (await client.post("/push", json=bodies[3][1], headers=headers)).status == 200
        await ingest.wait_idle()
    finally:
        await ingest.stop(1)
    store = rig.bridge.store
    assert store is not None
    assert await store.count_notifications("event.created") == 4


async def test_deeply_nested_push_is_400_not_500(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    deep = '{"hookName":"EVENT_TRIGGERED","message":' + "[" * 100_000 + "]" * 100_000 + "}"
    resp = await push(rig, deep)
    assert resp.status == 400
    inner = json.dumps({"hookName": "EVENT_TRIGGERED", "message": "[" * 100_000 + "]" * 100_000})
    resp = await push(rig, inner)
    assert resp.status == 400


async def test_a_push_message_longer_than_one_vendor_string_is_ingested(
    rig_factory: RigFactory,
) -> None:
    """`message` is JSON in a string: the 4 KiB bound applies to the strings inside it
    once decoded, never to the encoded message itself."""
    rig = await rig_factory()
    ticket, body = event_push(rig, video=False)
    message = json.loads(body["message"])
    message["detail"] = "https://fleet.example.com/detail?" + "q" * 6000
    message["driver_name"] = f"Jo{chr(0xD800)}e"
    body = {**body, "message": json.dumps(message)}
    assert len(body["message"]) > 6000
    rig.clock.advance(1)
    resp = await push(rig, body)
    assert resp.status == 200, await resp.text()
    await drained(rig)
    await wait_for(lambda: rig.receiver.tickets()[ticket] == 1, message="the long push")
    rig.assert_all_valid()
