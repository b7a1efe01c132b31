"""A real webhook receiver for tests: verifies Standard Webhooks signatures, records
what arrived, and can be told to fail (status codes, Retry-After) per request."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

Behaviour = Callable[[int], tuple[int, dict[str, str]]]


def always(status: int, headers: dict[str, str] | None = None) -> Behaviour:
    return lambda _n: (status, headers or {})


def fail_first(times: int, status: int = 503) -> Behaviour:
    return lambda n: (status, {}) if n <= times else (200, {})


@dataclass
class Receiver:
    """Records verified deliveries; `behaviour(n)` decides the answer to request n (1-based)."""

    secret: str = SECRET
    behaviour: Behaviour = field(default_factory=lambda: always(200))
    requests: int = 0
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    rejected_signatures: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        import time

        body = await request.text()
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.rejected_signatures += 1
            return web.Response(status=401)
        self.requests += 1
        self.request_times.append(time.monotonic())
        status, headers = self.behaviour(self.requests)
        if 200 <= status < 300:
            env = json.loads(body)
            assert env["id"] == request.headers["webhook-id"]
            self.envelopes.append(env)
        return web.Response(status=status, headers=headers)

    # -- views -----------------------------------------------------------------------

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.envelopes if e["type"] == type_]

    def tickets(self, type_: str = "event.created") -> Counter[str]:
        return Counter(e["data"]["ticket"] for e in self.of_type(type_))
