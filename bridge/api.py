"""The admin API under `/api/v1` (SPEC §7): bearer auth, JSON errors, validated bodies.

`api_middleware` guards every `/api/v1` path: with `server.admin_token` unset the
whole API answers 404; otherwise a missing or wrong bearer token is 401 (compared in
constant time). Every error under `/api/v1` — ours, aiohttp's (404, 405, 413) or an
unexpected crash — is the JSON `{"error": {"code": …, "message": …}}`.

Handlers live in `routes` (a `RouteTableDef`); `add_api_routes` registers them. To
add an endpoint, decorate a handler with `@routes.get/post(API_PREFIX + "/…")`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from bridge.app import BRIDGE, Bridge
from bridge.clips import ClipRequest, ClipTracker, clip_view
from bridge.upstream.errors import (
    UpstreamApiError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamUnavailable,
)

log = structlog.get_logger(__name__)

API_PREFIX: Final = "/api/v1"
routes = web.RouteTableDef()
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    502: "upstream_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raise in a handler to answer with a JSON error."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def json_error(
    status: int, code: str, message: str, *, field: str | None = None, **headers: str
) -> web.Response:
    """`{"error": {"code", "message"[, "field"]}}` with `status`."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status, headers=headers or None)


def _in_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def bearer_ok(header: str | None, token: str) -> bool:
    """True when `Authorization: Bearer <token>` carries `token` (constant time)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth and JSON errors for `/api/v1`; other paths pass through untouched."""
    if not _in_api(request.path):
        return await handler(request)
    token = request.app[BRIDGE].settings.server.admin_token
    if token is None:
        return json_error(404, "not_found", "the admin API is disabled (server.admin_token unset)")
    if not bearer_ok(request.headers.get("Authorization"), token.get_secret_value()):
        return json_error(
            401,
            "unauthorized",
            "missing or wrong bearer token",
            **{"WWW-Authenticate": 'Bearer realm="fleet-bridge"'},
        )
    try:
        return await handler(request)
    except ApiError as err:
        return json_error(err.status, err.code, err.message, field=err.field)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        return json_error(exc.status, code, exc.reason)
    except Exception:
        log.exception("admin API handler crashed", path=request.path, method=request.method)
        return json_error(500, "internal", "internal error (logged)")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; 400 when it is not JSON (413 past the size limit)."""
    raw = await request.read()  # raises 413 past server.max_body_bytes
    if not raw.strip():
        raise ApiError(400, "invalid_body", "body: expected a JSON object", field="body")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "body: not valid JSON", field="body") from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The body validated by `model`; 400 naming the first offending field."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "body: expected a JSON object", field="body")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "missing":
            message = f"{field}: required"
        elif first["type"] == "extra_forbidden":
            message = f"{field}: unknown field"
        else:
            message = f"{field}: {first['msg'].removeprefix('Value error, ')}"
        raise ApiError(400, "invalid_field", message, field=field) from None


def upstream_error(err: UpstreamError) -> ApiError:
    """An upstream failure as the admin API reports it (never a 500)."""
    detail = f"{err.message}" + (f" (vendor code {err.code}, uq {err.uq})" if err.code else "")
    if isinstance(err, UpstreamApiError) and err.status == 404:
        return ApiError(404, "not_found", f"upstream: {detail}")
    if isinstance(err, UpstreamApiError) and err.status in (400, 422):
        return ApiError(400, "upstream_rejected", f"upstream refused the request: {detail}")
    if isinstance(err, UpstreamUnavailable | UpstreamAuthError):
        return ApiError(502, "upstream_unavailable", f"upstream: {detail}")
    return ApiError(502, "upstream_error", f"upstream: {detail}")


def _bridge(request: web.Request) -> Bridge:
    return request.app[BRIDGE]


def _tracker(b: Bridge) -> ClipTracker:
    if b.clips is None:
        raise ApiError(503, "unavailable", "clip tracking is not running")
    return b.clips


# --------------------------------------------------------------------------- clips


@routes.post(API_PREFIX + "/clips")
async def request_clip(request: web.Request) -> web.Response:
    """Validate, ask the vendor for a clip, track it: 202 with the tracked clip."""
    req = await parse_body(request, ClipRequest)  # nothing reaches the vendor before this
    tracker = _tracker(_bridge(request))
    try:
        record = await tracker.request(req)
    except UpstreamError as err:
        raise upstream_error(err) from None
    return web.json_response(clip_view(record), status=202)


@routes.get(API_PREFIX + "/clips/{task_id}")
async def get_clip(request: web.Request) -> web.Response:
    """The tracked clip's state."""
    task_id = request.match_info["task_id"]
    record = await _tracker(_bridge(request)).get(task_id)
    if record is None:
        raise ApiError(404, "not_found", f"no tracked clip {task_id}")
    return web.json_response(clip_view(record))


# --------------------------------------------------------------------------- events


class DiscardBody(BaseModel):
    """`{"confirm": true}`: discarding is irreversible."""

    model_config = ConfigDict(extra="forbid")

    confirm: StrictBool


@routes.post(API_PREFIX + "/events/{ticket}/discard")
async def discard_event(request: web.Request) -> web.Response:
    """Proxy to `POST /V2/event/discard` once the caller confirmed."""
    body = await parse_body(request, DiscardBody)
    if not body.confirm:
        raise ApiError(
            400,
            "confirm_required",
            "confirm: must be true (discard is irreversible)",
            field="confirm",
        )
    ticket = request.match_info["ticket"]
    b = _bridge(request)
    assert b.client is not None
    try:
        await b.client.discard(ticket)
    except UpstreamError as err:
        raise upstream_error(err) from None
    log.info("event discarded through the admin API", ticket=ticket)
    return web.json_response({"ticket": ticket, "discarded": True})


# --------------------------------------------------------------------------- polling


@routes.post(API_PREFIX + "/poll")
async def poll_now(request: web.Request) -> web.Response:
    """Run the events poll now (after a run already under way); answer with its counts."""
    b = _bridge(request)
    if b.scheduler is None or b.events_poller is None:
        raise ApiError(409, "conflict", "polling is not running in this process")
    stats = await b.scheduler.run_now("events")
    if stats is None:
        raise ApiError(
            502, "poll_failed", f"the events poll failed: {b.events_poller.status.last_error}"
        )
    return web.json_response(
        {
            "job": "events",
            "fetched": stats.fetched,
            "created": stats.created,
            "updated": stats.updated,
            "duplicates": stats.duplicates,
            "malformed": stats.malformed,
        }
    )


def add_api_routes(app: web.Application) -> None:
    """Register the `/api/v1` handlers and their middleware."""
    app.middlewares.append(api_middleware)
    app.router.add_routes(routes)
