"""Injected failures: what each fault kind does to one request.

"slow" and "timeout" use real `asyncio.sleep` on purpose: they model the network,
which the client measures with its own (real) timeouts, not the simulator clock.
The sleep ends early when the server shuts down, so stopping never waits for it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from bridge.aio import wait_at_most
from bridge.simulator.config import FaultSpec
from bridge.simulator.envelope import (
    INTERNAL,
    RATE_LIMITED,
    REFUSED,
    UNAVAILABLE,
    ApiError,
    envelope,
    error,
)


async def _sleep(seconds: float, stopping: asyncio.Event) -> None:
    await wait_at_most(seconds, stopping.wait())


def _retry_after(spec: FaultSpec) -> dict[str, str]:
    # Whole seconds as RFC 9110 wants ("2"); a fractional value is sent as configured
    # ("0.5") because fast tests ask for it, and clients ought to cope.
    return {"Retry-After": f"{spec.retry_after:g}"}


async def apply_fault(
    kind: str, request: web.Request, uq: str, spec: FaultSpec, stopping: asyncio.Event
) -> web.StreamResponse | None:
    """The response `kind` produces, or None when the request should then go on normally."""
    match kind:
        case "500":
            return error(uq, ApiError(500, INTERNAL, "simulated internal error"))
        case "503":
            err = ApiError(503, UNAVAILABLE, "simulated outage", headers=_retry_after(spec))
            return error(uq, err)
        case "429":
            err = ApiError(429, RATE_LIMITED, "too many requests", headers=_retry_after(spec))
            return error(uq, err)
        case "slow":
            await _sleep(spec.slow_s, stopping)
            return None
        case "timeout":
            await _sleep(spec.timeout_s, stopping)
            return None
        case "result_false":
            body = envelope(uq, None, result=False, code=REFUSED, message="simulated refusal")
            return web.json_response(body)
        case "malformed":
            # Cut off mid-document, as a proxy dropping the rest of the body would.
            return web.Response(
                text=f'{{"uq": "{uq}", "doc_version": "latest", "result": tru',
                content_type="application/json",
            )
        case "drop":
            if request.transport is not None:
                request.transport.close()
            # Never written: the connection is already closed.
            return web.Response(status=500)
    raise AssertionError(f"unknown fault kind {kind!r}")
