"""A restartable rig for the clip / push / upload / report / admin API tests.

Simulator and bridge share one FakeClock (as in test_pipeline_e2e.py); the bridge is
served through pytest-aiohttp's `aiohttp_client`, so tests call its HTTP API, and
`restart()` stops it and builds a new one on the same SQLite file. Notifications go to
a real Standard Webhooks receiver (strict FIFO) and to a console target whose lines
are kept in memory (for tests that move the clock by days: signed webhook timestamps
would then be rejected as stale).
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import wait_for
from envelope_schema import validate_envelope
from webhook_receiver import SECRET, Receiver

from bridge.app import BRIDGE, Bridge, build_app
from bridge.clock import FakeClock, SystemClock
from bridge.settings import Settings, settings_from_dict
from bridge.simulator import Simulator, SimulatorConfig

ADMIN_TOKEN = "admin-test-token"
PUSH_TOKEN = "push-test-token-0123"
PUSH_PATH = "/ingest/visionmax"

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Rig:
    clock: FakeClock
    sim: Simulator
    receiver: Receiver
    settings: Settings
    client: TestClient[Any, Any]
    make_client: ClientFactory
    console: io.StringIO = field(default_factory=io.StringIO)

    @property
    def bridge(self) -> Bridge:
        return self.client.app[BRIDGE]  # type: ignore[index]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def build(self) -> web.Application:
        return build_app(
            self.settings, clock=self.clock, stdout=self.console, upstream_clock=SystemClock()
        )

    async def restart(self) -> None:
        """Stop the bridge (graceful shutdown) and start a new one on the same store."""
        await self.client.close()
        self.client = await self.make_client(self.build())
        await self.wait_started()

    async def wait_started(self) -> None:
        """Wait for the scheduler's start-up events poll, so it never races a test's own."""
        poller = self.bridge.events_poller
        assert poller is not None
        await wait_for(lambda: poller.status.last_success_at is not None, message="first poll")

    async def run(self, job: str) -> Any:
        assert self.bridge.scheduler is not None
        return await self.bridge.scheduler.run_now(job)

    async def settle(self) -> None:
        for d in self.bridge.dispatchers.values():
            await d.wait_idle()

    def types(self) -> list[str]:
        return [e["type"] for e in self.receiver.envelopes]

    def console_envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.console.getvalue().splitlines() if line]

    def assert_all_valid(self) -> None:
        for env in self.receiver.envelopes + self.console_envelopes():
            validate_envelope(env)

    def videoclip_calls(self) -> int:
        return sum(1 for r in self.sim.requests if r.path.startswith("/V2/event/videoClip/"))

    async def post_clip(self, body: Any, **kw: Any) -> Any:
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return await self.client.post(
            "/api/v1/clips",
            data=data,
            headers={**self.auth, "Content-Type": "application/json"},
            **kw,
        )


async def make_rig(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    *,
    config: dict[str, Any] | None = None,
    sim: dict[str, Any] | None = None,
    start: float | None = None,
    webhook: bool = True,
    extra_targets: tuple[dict[str, Any], ...] = (),
    password_auth: bool = False,
) -> Rig:
    clock = FakeClock(start=time.time() if start is None else start)
    simulator = Simulator(
        SimulatorConfig(
            **{"seed": 11, "devices": 6, "rate": 0.0, "base_time": clock.now(), **(sim or {})}
        ),
        clock=clock,
    )
    sim_server = await aiohttp_server(simulator.app())
    receiver = Receiver()
    targets: list[dict[str, Any]] = [{"name": "out", "type": "console"}]
    if webhook:
        rec_server = await aiohttp_server(receiver.app())
        targets.append(
            {
                "name": "hook",
                "type": "webhook",
                "url": str(rec_server.make_url("/hook")),
                "secret": SECRET,
                "max_in_flight": 1,  # strict FIFO: receipt order is creation order
                "retry": {"base_delay_s": 0.5, "max_delay_s": 2, "max_attempts": 6},
            }
        )
    targets.extend(extra_targets)
    raw = {
        "upstream": {
            "base_url": str(sim_server.make_url("")),
            "api_key": "sim-key",
            "auth": {"token": "sim-token"},
            "page_size": 50,
            "max_requests_per_s": 1000,
        },
        "poll": {
            # Jobs run once at start-up, then only when a test says so.
            "events": {"interval_s": 3600, "start_from": "1h"},
            "clips": {"interval_s": 3600},
        },
        "server": {"admin_token": ADMIN_TOKEN},
        "store": {"url": f"sqlite:///{tmp_path / 'bridge.db'}"},
        "logging": {"format": "json"},
        "targets": targets,
    }
    if password_auth:
        raw["upstream"]["auth"] = {"email": "ops@example.com", "password": "sim-password"}
    settings = settings_from_dict(deep_merge(raw, config or {}), {})
    rig = Rig(
        clock=clock,
        sim=simulator,
        receiver=receiver,
        settings=settings,
        client=None,  # type: ignore[arg-type]
        make_client=aiohttp_client,
    )
    rig.client = await aiohttp_client(rig.build())
    await rig.wait_started()
    return rig
