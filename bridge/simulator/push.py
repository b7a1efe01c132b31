"""Vendor-style webhooks: EVENT_TRIGGERED, TASK_UPDATE and ASSET_UPLOADED.

`refresh()` queues a body in `Simulator.outbox` whenever an event arrives, media
becomes available or a clip task changes state; a background task (owned by the
app's cleanup context) posts them to `push_url` once per `push_interval_s` of
simulator time. Delivery is best effort: one attempt, failures logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web

from bridge.simulator.data import SEVERITY_WORDS, Event

if TYPE_CHECKING:
    from bridge.simulator.core import Simulator
    from bridge.simulator.tasks import ClipTask

log = structlog.get_logger(__name__)

_KID = "sim-key-1"
_TIMEOUT = aiohttp.ClientTimeout(total=5)


def _body(sim: Simulator, hook: str, message: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(message, separators=(",", ":"))
    # The vendor's signature algorithm is not public; an HMAC of the message with the
    # API key stands in for it (receivers must not reject on it anyway).
    signature = hmac.new(sim.config.api_key.encode(), text.encode(), hashlib.sha256).hexdigest()
    return {
        "type": "Notification",
        "hookName": hook,
        "messageId": sim.new_uq(),
        "message": text,
        "signature": signature,
        "kid": _KID,
    }


def _event_message(event: Event) -> dict[str, Any]:
    item = event.item
    device = event.device
    videos = event.cameras[: int(item["videos_count"])] if event.has_video else ()
    return {
        "device_sn": device.serial_number,
        "device_cid": device.device_cid,
        # The vendor sends GPS values as strings.
        "gps": {
            "lng": f"{item['lng']:.6f}",
            "lat": f"{item['lat']:.6f}",
            "alt": "0.0",
            "speed": f"{event.speed:.1f}",
            "direction": "N",
        },
        "timestamp": item["timestamp"],
        "event_type": item["type"],
        "event_name": item["type_name"],
        "ticket": event.ticket,
        "severity_level": SEVERITY_WORDS.get(item["severity_level"], "Unknown"),
        "task_id": "",
        "detail": f"/V2/event/detailV2?ticket={event.ticket}",
        "snapshots": {"count": len(device.cameras), "capture_mode": list(device.cameras)},
        "video": {"count": len(videos), "capture_mode": list(videos)},
    }


def event_triggered(sim: Simulator, event: Event) -> dict[str, Any]:
    """The webhook body for a newly arrived event."""
    return _body(sim, "EVENT_TRIGGERED", _event_message(event))


def asset_uploaded(sim: Simulator, event: Event) -> dict[str, Any]:
    """The webhook body for an event whose videos became available."""
    return _body(sim, "ASSET_UPLOADED", _event_message(event))


def task_update(sim: Simulator, task: ClipTask, now: float) -> dict[str, Any]:
    """The webhook body for a clip task that changed state."""
    result = task.result(now)
    message = {
        "device_sn": task.device.serial_number,
        "device_cid": task.device.device_cid,
        "timestamp": int(now),
        "task_id": task.task_id,
        "task_state": result["task_state"],
        "ticket": task.ticket or "",
        "last_ack_message": result["last_ack_message"],
    }
    return _body(sim, "TASK_UPDATE", message)


async def _run(sim: Simulator, session: aiohttp.ClientSession, url: str) -> None:
    failing = False
    while True:
        sim.refresh()
        while sim.outbox:
            body = sim.outbox.popleft()
            try:
                async with session.post(url, json=body) as resp:
                    ok = resp.status < 300
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as err:
                ok, problem = False, repr(err)
            # Log the change, not every failed post.
            if not ok and not failing:
                log.warning("simulator push failing", url=url, error=problem)
            elif ok and failing:
                log.info("simulator push recovered", url=url)
            failing = not ok
        await sim.clock.sleep(sim.config.push_interval_s)


def pusher_ctx(sim: Simulator) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that runs the push loop while the app is up."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        assert sim.config.push_url
        session = aiohttp.ClientSession(timeout=_TIMEOUT)
        task = asyncio.create_task(_run(sim, session, sim.config.push_url))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await session.close()

    return ctx
