"""The running bridge against its OpenAPI document (`bridge/openapi.json`), with schemathesis.

Schemathesis generates requests for every documented operation, schema-valid
(positive) and schema-violating (negative) alike, and runs every check it has on each
answer: no 5xx, documented status codes, content types and headers, bodies that match
the documented schema, valid data accepted, invalid data rejected, 405 with `Allow`
for undocumented methods, the 401 without a token. So the document is exactly as
strict as the server. The bridge (with the simulator and a webhook receiver) runs in a
thread with its own event loop because schemathesis calls it synchronously.
Generation is derandomized and bounded so the test is deterministic and takes well
under a minute.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, settings
from schemathesis import GenerationMode
from webhook_receiver import SECRET, Receiver

from bridge.app import build_app
from bridge.clock import FakeClock, SystemClock
from bridge.settings import settings_from_dict
from bridge.simulator import Simulator, SimulatorConfig
from bridge.store.base import encode_cursor

TOKEN = "conformance-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCUMENT = json.loads(resources.files("bridge").joinpath("openapi.json").read_text())


def with_examples(document: dict[str, Any]) -> dict[str, Any]:
    """The document plus examples naming this rig's targets and rows.

    Random strings never hit a configured target, so without these the success
    answers of resume, test and replay would never be generated and checked.
    """
    doc = copy.deepcopy(document)
    paths = doc["paths"]
    for path in ("/api/v1/targets/{name}/resume", "/api/v1/targets/{name}/test"):
        paths[path]["post"]["parameters"][0]["example"] = "hook"
    paths["/api/v1/deliveries/{id}/retry"]["post"]["parameters"][0]["example"] = 2
    for param in paths["/api/v1/deliveries"]["get"]["parameters"]:
        param["example"] = {
            "state": "dead",
            "target": "hook",
            "limit": 2,
            "cursor": encode_cursor(5),
        }[param["name"]]
    replay = paths["/api/v1/replay"]["post"]["requestBody"]["content"]["application/json"]
    replay["example"] = {"target": "hook", "since": 0}
    # The document cannot know a deployment's target names; this rig's are these, so
    # any other name is invalid data the server must refuse.
    names = ["hook", "out"]
    doc["components"]["schemas"]["ReplayRequest"]["properties"]["target"]["enum"] = names
    for param in paths["/api/v1/deliveries"]["get"]["parameters"]:
        if param["name"] == "target":
            param["schema"]["enum"] = names
        # Likewise a cursor is valid only if the server handed it out: these could be.
        if param["name"] == "cursor":
            param["schema"]["enum"] = [encode_cursor(i) for i in (1, 5, 12, 2**63 - 1)]
    return doc


schema = schemathesis.openapi.from_dict(with_examples(DOCUMENT))
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@dataclass
class LiveBridge:
    """Simulator, receiver and bridge served on loopback from one background loop."""

    db: Path
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="live-bridge", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the bridge did not start within 30 s")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        assert self._loop is not None
        assert self._stop is not None
        assert self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:  # surfaced to the test thread
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        clock = FakeClock(start=time.time())
        sim = Simulator(
            SimulatorConfig(seed=11, devices=6, rate=0.0, base_time=clock.now()), clock=clock
        )
        for i in range(6):
            sim.add_event(timestamp=int(clock.now()) - 60 + i)
        # Every other delivery is refused for good, so dead rows exist to retry.
        receiver = Receiver(behaviour=lambda n: (400 if n % 2 else 200, {}))
        runners: list[web.AppRunner] = []

        async def serve(app: web.Application) -> str:
            runner = web.AppRunner(app)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            return f"http://{host}:{port}"

        try:
            sim_url = await serve(sim.app())
            hook_url = await serve(receiver.app()) + "/hook"
            settings_ = settings_from_dict(
                {
                    "upstream": {
                        "base_url": sim_url,
                        "api_key": "sim-key",
                        "auth": {"token": "sim-token"},
                        "max_requests_per_s": 1000,
                    },
                    "poll": {"events": {"interval_s": 3600, "start_from": "1h"}},
                    "server": {"admin_token": TOKEN, "max_body_bytes": 4096},
                    "store": {"url": f"sqlite:///{self.db}"},
                    "logging": {"format": "json"},
                    "targets": [
                        {"name": "out", "type": "console"},
                        {
                            "name": "hook",
                            "type": "webhook",
                            "url": hook_url,
                            "secret": SECRET,
                            "retry": {"max_attempts": 1},
                        },
                    ],
                },
                {},
            )
            app = build_app(
                settings_, clock=clock, stdout=io.StringIO(), upstream_clock=SystemClock()
            )
            self.url = await serve(app)
            self._ready.set()
            await self._stop.wait()
        finally:
            for runner in reversed(runners):
                await runner.cleanup()


@pytest.fixture(scope="module")
def live_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    bridge = LiveBridge(db=tmp_path_factory.mktemp("conformance") / "bridge.db")
    bridge.start()
    yield bridge
    bridge.stop()


def test_the_document_covers_every_admin_route() -> None:
    from bridge.api import routes

    documented = {
        (method.upper(), path) for path, ops in DOCUMENT["paths"].items() for method in ops
    }
    served = {(r.method, r.path) for r in routes if isinstance(r, web.RouteDef)}
    assert served <= documented
    assert {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")} <= documented


@schema.parametrize()
@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_the_server_conforms_to_its_openapi_document(
    case: schemathesis.Case, live_bridge: LiveBridge
) -> None:
    # Schemathesis generates an Authorization header where the document asks for one
    # (and leaves it out to test the 401): put the rig's real token where it put one.
    if case.headers is not None and "Authorization" in case.headers:
        case.headers["Authorization"] = AUTH["Authorization"]
    case.call_and_validate(base_url=live_bridge.url, timeout=10)
