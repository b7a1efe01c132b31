"""The admin API under `/api/v1` (SPEC §7): bearer auth, JSON errors, validated bodies.

`api_middleware` guards every `/api/v1` path: with `server.admin_token` unset the
whole API answers 404; otherwise a missing or wrong bearer token is 401 (compared in
constant time). Every error under `/api/v1` — ours, aiohttp's (404, 405, 413) or an
unexpected crash — is the JSON `{"error": {"code": …, "message": …}}`.

Handlers live in `routes` (a `RouteTableDef`); `add_api_routes` registers them. To
add an endpoint, decorate a handler with `@routes.get/post(API_PREFIX + "/…")`.
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources
from typing import Any, Final, TypeVar

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from bridge.app import BRIDGE, Bridge
from bridge.clips import ClipRequest, ClipTracker, clip_view
from bridge.clock import parse_rfc3339, utc_iso
from bridge.dispatch import Dispatcher, orphaned_counts
from bridge.health import events_poll_stale
from bridge.httpguard import json_error, read_body, tokens_match
from bridge.notifications import build_notification
from bridge.pollers import PollerStatus
from bridge.routing import TEST_TYPE
from bridge.store.base import (
    DeliveryRecord,
    DeliveryState,
    IngestTx,
    NewNotification,
    Store,
    StoreUnavailable,
    decode_cursor,
    encode_cursor,
)
from bridge.upstream.errors import (
    UpstreamApiError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamUnavailable,
)
from bridge.vendor_ids import is_ticket

log = structlog.get_logger(__name__)

API_PREFIX: Final = "/api/v1"
routes = web.RouteTableDef()
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """Raise in a handler to answer with a JSON error."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def _in_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def bearer_ok(header: str | None, token: str) -> bool:
    """True when `Authorization: Bearer <token>` carries `token` (constant time)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return tokens_match(given.strip(), token)


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth and handler errors for `/api/v1`; other paths pass through untouched.

    aiohttp's own errors (404, 405, 413) and crashes become JSON in the outer
    `guard_middleware`, on every path alike.
    """
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
        _check_query(request)
        return await handler(request)
    except ApiError as err:
        return json_error(err.status, err.code, err.message, field=err.field)


# The query parameters each endpoint takes (by method and route); any other is a 400,
# as the OpenAPI document says.
_QUERY_PARAMS: Final = {
    ("GET", API_PREFIX + "/deliveries"): frozenset({"state", "target", "limit", "cursor"}),
}


def _check_query(request: web.Request) -> None:
    if not request.query or request.match_info.http_exception is not None:
        return
    resource = request.match_info.route.resource
    allowed = _QUERY_PARAMS.get(
        (request.method, resource.canonical if resource else ""), frozenset()
    )
    for name in request.query:
        if name not in allowed:
            raise ApiError(400, "invalid_field", f"{name}: unknown query parameter", field=name)
        if len(request.query.getall(name)) > 1:
            raise ApiError(400, "invalid_field", f"{name}: given more than once", field=name)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _json_number(text: str) -> int | float:
    # JSON Schema counts 30.0 as an integer, so the API does too: an integral number
    # (within the doubles' exact range) is handed to validation as an int.
    value = float(text)
    return int(value) if value.is_integer() and abs(value) <= 2**53 else value


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; 400 when it is not JSON, 415 when not sent as JSON."""
    if not _is_json(request.content_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            "body: send it as application/json",
            field="body",
        )
    server = request.app[BRIDGE].settings.server
    # A BodyError (413, 408) goes up to guard_middleware, which also drops the connection.
    raw = await read_body(request, limit=server.max_body_bytes, timeout_s=server.read_timeout_s)
    if not raw.strip():
        raise ApiError(400, "invalid_body", "body: expected a JSON object", field="body")
    try:
        return json.loads(raw, parse_float=_json_number)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "body: not valid JSON", field="body") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "body: nested too deeply", field="body") from None


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
    ticket = request.match_info["ticket"]
    if not is_ticket(ticket):
        raise ApiError(
            400,
            "invalid_field",
            "ticket: expected the vendor's ticket form (a UUID)",
            field="ticket",
        )
    body = await parse_body(request, DiscardBody)
    if not body.confirm:
        raise ApiError(
            400,
            "confirm_required",
            "confirm: must be true (discard is irreversible)",
            field="confirm",
        )
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
    if not await b.scheduler.may_run():
        raise ApiError(409, "conflict", "this replica does not hold the poll lease; ask the leader")
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


# --------------------------------------------------------------------------- status


def _iso(ts: float | None) -> str | None:
    return None if ts is None else utc_iso(ts)


def _poller_view(status: PollerStatus, now: float) -> dict[str, Any]:
    return {
        "last_run_at": _iso(status.last_run_at),
        "last_success_at": _iso(status.last_success_at),
        "last_error": status.last_error,
        "cursor": _iso(status.cursor),
        "lag_s": None if status.cursor is None else round(max(0.0, now - status.cursor), 3),
        "failing": status.failing,
        "reason": status.reason,
    }


async def _queue_counts(b: Bridge) -> dict[str, dict[str, int]]:
    try:
        return await _store(b).queue_counts()
    except StoreUnavailable as err:
        raise ApiError(503, "unavailable", f"the store is not answering: {err}") from None


@routes.get(API_PREFIX + "/status")
async def status(request: web.Request) -> web.Response:
    """Per poller: runs, cursor and lag; per target: queue counts, pause and health."""
    b = _bridge(request)
    now = b.clock.now()
    pollers: dict[str, Any] = {}
    if b.scheduler is not None:
        for job, job_status in b.scheduler.status.items():
            if job != "prune":  # housekeeping, not a poller
                pollers[job] = _poller_view(job_status, now)
    if b.events_poller is not None:
        # The events poller's own status also knows its cursor.
        pollers["events"] = _poller_view(b.events_poller.status, now)
    await _shared_events_status(b, pollers, now)
    counts = await _queue_counts(b)
    targets: dict[str, Any] = {}
    for name, d in b.dispatchers.items():
        c = counts.get(name, {})
        state, health = d.state, d.health
        targets[name] = {
            "pending": c.get("pending", 0),
            "in_flight": c.get("in_flight", 0),
            "dead": c.get("dead", 0),
            "paused": state.paused,
            "paused_reason": state.paused_reason,
            "hold_until": _iso(state.hold_until),
            "failing": health.failing,
            "last_error": health.last_error,
            "last_status": health.last_status,
            "last_success_at": _iso(health.last_success_at),
            "delivered": health.delivered,  # since this process started
            "reason": d.reason,
        }
    login = b.client.login_state if b.client is not None else None
    upstream = {
        "login_failing": bool(login and login.failing),
        "login_retry_at": _iso(login.retry_at) if login else None,
        "reason": login.reason if login else None,
    }
    return web.json_response(
        {
            "pollers": pollers,
            "targets": targets,
            "orphaned": orphaned_counts(counts, b.dispatchers),
            "upstream": upstream,
            "replica": b.replica,
            "leader": await _leader(b),
        }
    )


async def _shared_events_status(b: Bridge, pollers: dict[str, Any], now: float) -> None:
    """The events poll as any replica last ran it: only the leader polls, but every
    replica's status shows the last success and the cursor from the store."""
    if b.ingestor is None:
        return
    try:
        last = await b.ingestor.last_success("events")
        cursor = await b.ingestor.get_cursor("events")
    except StoreUnavailable as err:
        raise ApiError(503, "unavailable", f"the store is not answering: {err}") from None
    local = b.events_poller.status if b.events_poller is not None else PollerStatus()
    shared = PollerStatus(
        last_run_at=local.last_run_at,
        last_success_at=max(
            (t for t in (local.last_success_at, last) if t is not None), default=None
        ),
        last_error=local.last_error,
        cursor=cursor if cursor is not None else local.cursor,
        failing=local.failing,
        reason=local.reason,
    )
    pollers["events"] = _poller_view(shared, now)
    pollers["events"]["stale"] = events_poll_stale(b, shared.last_success_at)


async def _leader(b: Bridge) -> dict[str, Any] | None:
    """The poll lease as the store has it (any replica's), or None before anyone took it."""
    try:
        lease = await _store(b).get_lease()
    except StoreUnavailable as err:
        raise ApiError(503, "unavailable", f"the store is not answering: {err}") from None
    if lease is None:
        return None
    live = lease.holder is not None and lease.expires_at > b.clock.now()
    return {
        "replica": lease.holder if live else None,
        "epoch": lease.epoch,
        "expires_at": utc_iso(lease.expires_at),
    }


# --------------------------------------------------------------------------- deliveries

MAX_LIST_LIMIT: Final = 1000
DEFAULT_LIST_LIMIT: Final = 100
# SQLite integers are signed 64-bit: a larger id cannot exist (and would overflow).
_MAX_ID: Final = 2**63 - 1


def _store(b: Bridge) -> Store:
    if b.store is None:
        raise ApiError(503, "unavailable", "the store is not open")
    return b.store


def _known_target(b: Bridge, name: str, *, field: str | None = None) -> Dispatcher:
    d = b.dispatchers.get(name)
    if d is None:
        if field is not None:
            raise ApiError(400, "invalid_field", f"{field}: no target named {name!r}", field=field)
        raise ApiError(404, "not_found", f"no target named {name!r}")
    return d


def delivery_view(r: DeliveryRecord) -> dict[str, Any]:
    """A delivery row as the API shows it."""
    return {
        "id": r.id,
        "notification_id": r.notification_id,
        "type": r.type,
        "target": r.target,
        "state": r.state.value,
        "attempts": r.attempts,
        "last_status": r.last_status,
        "last_error": r.last_error,
        "next_attempt_at": _iso(r.next_attempt_at),
        "created_at": _iso(r.created_at),
    }


def _ascii_int(raw: str, max_digits: int) -> int | None:
    # int() also takes Unicode digits ("١٢"), signs, spaces and underscores, and refuses
    # more than 4300 digits with an error of its own: accept plain ASCII digits only.
    if not raw or len(raw) > max_digits or not raw.isascii() or not raw.isdigit():
        return None
    return int(raw)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIST_LIMIT
    value = _ascii_int(raw, 4) or 0
    if not 1 <= value <= MAX_LIST_LIMIT:
        raise ApiError(
            400,
            "invalid_field",
            f"limit: expected an integer from 1 to {MAX_LIST_LIMIT}",
            field="limit",
        )
    return value


def _cursor(raw: str | None) -> str | None:
    # Cursors are opaque tokens the store handed out; only it can read them.
    if raw is None:
        return None
    try:
        decode_cursor(raw)
    except ValueError:
        raise ApiError(
            400, "invalid_field", "cursor: not a cursor this API handed out", field="cursor"
        ) from None
    return raw


@routes.get(API_PREFIX + "/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    """Deliveries newest first, filtered by state and target, one page at a time."""
    b = _bridge(request)
    q = request.query
    state: DeliveryState | None = None
    if "state" in q:
        try:
            state = DeliveryState(q["state"])
        except ValueError:
            allowed = ", ".join(s.value for s in DeliveryState)
            raise ApiError(
                400, "invalid_field", f"state: expected one of {allowed}", field="state"
            ) from None
    target = q.get("target")
    # A removed target's deliveries are kept and listable (SPEC §4); a name that is
    # neither configured nor holds deliveries is a 400 (a typo, most likely).
    removed = target is not None and target not in b.dispatchers
    if removed and target not in await _queue_counts(b):
        _known_target(b, target or "", field="target")
    limit = _limit(q.get("limit"))
    cursor = _cursor(q.get("cursor"))
    try:
        records, next_cursor = await _store(b).list_deliveries(
            state=state, target=target, limit=limit, cursor=cursor
        )
    except StoreUnavailable as err:
        raise ApiError(503, "unavailable", f"the store is not answering: {err}") from None
    return web.json_response(
        {"items": [delivery_view(r) for r in records], "next_cursor": next_cursor}
    )


async def _find_delivery(store: Store, delivery_id: int) -> DeliveryRecord | None:
    # The listing is newest first from `cursor` (exclusive), so the first row after
    # cursor id+1 is this id if it exists; no dedicated lookup needed in the Store.
    records, _ = await store.list_deliveries(limit=1, cursor=encode_cursor(delivery_id + 1))
    return records[0] if records and records[0].id == delivery_id else None


@routes.post(API_PREFIX + r"/deliveries/{id}/retry")
async def retry_delivery(request: web.Request) -> web.Response:
    """Re-queue one dead delivery (due now, attempts from 0): 200 with the row."""
    b = _bridge(request)
    raw = request.match_info["id"]
    delivery_id = _ascii_int(raw, 19) or 0
    if not 1 <= delivery_id <= _MAX_ID - 1:
        raise ApiError(404, "not_found", f"no delivery {raw}")
    store = _store(b)
    try:
        requeued = await store.retry_delivery(delivery_id, b.clock.now())
        record = await _find_delivery(store, delivery_id)
    except StoreUnavailable as err:
        raise ApiError(503, "unavailable", f"the store is not answering: {err}") from None
    if record is None:
        raise ApiError(404, "not_found", f"no delivery {delivery_id}")
    if not requeued:
        raise ApiError(409, "not_dead", f"delivery {delivery_id} is {record.state.value}, not dead")
    d = b.dispatchers.get(record.target)
    if d is not None:
        d.wake()
    log.info("dead delivery re-queued through the admin API", delivery=delivery_id)
    return web.json_response(delivery_view(record))


# --------------------------------------------------------------------------- targets


@routes.post(API_PREFIX + "/targets/{name}/resume")
async def resume_target(request: web.Request) -> web.Response:
    """Un-pause a target: 200 `{"target", "paused": false}`; 409 when it was not paused.

    409 rather than a quiet 200 so an operator (or a script) learns that the target
    was not in the state they believed.
    """
    name = request.match_info["name"]
    d = _known_target(_bridge(request), name)
    try:
        resumed = await d.resume()
    except StoreUnavailable as err:
        raise ApiError(503, "unavailable", f"the store is not answering: {err}") from None
    if not resumed:
        raise ApiError(409, "not_paused", f"target {name!r} is not paused")
    return web.json_response({"target": name, "paused": False})


@routes.post(API_PREFIX + "/targets/{name}/test")
async def test_target(request: web.Request) -> web.Response:
    """Store a `bridge.test` notification with one delivery, to this target only: 202."""
    b = _bridge(request)
    name = request.match_info["name"]
    _known_target(b, name)
    n = build_notification(
        TEST_TYPE,
        {"target": name, "message": f"fleet-bridge test notification for target {name}"},
        base_url=str(b.settings.upstream.base_url),
        now=b.clock.now(),
    )

    async def store_it(tx: IngestTx) -> None:
        await tx.add_notifications([NewNotification(n, [name])])

    try:
        await _store(b).ingest(store_it)  # wakes the target's dispatcher after commit
    except StoreUnavailable as err:
        raise ApiError(503, "unavailable", f"the store is not answering: {err}") from None
    b.metrics.notifications.labels(type=TEST_TYPE).inc()
    log.info("test notification queued", target=name, notification_id=n.id)
    return web.json_response({"target": name, "notification_id": n.id}, status=202)


# --------------------------------------------------------------------------- replay


# Unix seconds the API takes: from the epoch to the end of year 9999 (what an RFC 3339
# time can say). An RFC 3339 time before the epoch is clamped to it: nothing is older.
MAX_UNIX_S: Final = 253402300800


def parse_time(value: object) -> float:
    """Unix seconds, or an RFC 3339 string with a zone, → Unix seconds."""
    if isinstance(value, str):
        return min(max(parse_rfc3339(value).timestamp(), 0.0), MAX_UNIX_S - 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected Unix seconds or an RFC 3339 time")
    if not math.isfinite(value) or not 0 <= value < MAX_UNIX_S:
        raise ValueError(f"time out of range (Unix seconds from 0 to {MAX_UNIX_S})")
    return float(value)


class ReplayBody(BaseModel):
    """`{target, since, until}`; times are Unix seconds or RFC 3339; `until` defaults to now."""

    model_config = ConfigDict(extra="forbid")

    target: StrictStr
    since: float
    until: float | None = None

    # "before": one message for every wrong type, and the field named without the
    # union member pydantic would otherwise append to it (`since.int`).
    @field_validator("since", "until", mode="before")
    @classmethod
    def _time(cls, v: object) -> float | None:
        return None if v is None else parse_time(v)


@routes.post(API_PREFIX + "/replay")
async def replay(request: web.Request) -> web.Response:
    """Queue the notifications of [since, until] once more to one target, original ids."""
    b = _bridge(request)
    body = await parse_body(request, ReplayBody)
    d = _known_target(b, body.target, field="target")
    now = b.clock.now()
    since = body.since
    until = now if body.until is None else body.until
    # An `until` before `since` is an empty interval: nothing is queued (the answer's
    # `queued: 0` says so). Refusing it would be a rule the OpenAPI schema cannot state.
    try:
        queued = 0 if until < since else await _store(b).replay(body.target, since, until, now)
    except StoreUnavailable as err:
        raise ApiError(503, "unavailable", f"the store is not answering: {err}") from None
    d.wake()
    log.info("replay queued through the admin API", target=body.target, queued=queued)
    return web.json_response(
        {"target": body.target, "since": utc_iso(since), "until": utc_iso(until), "queued": queued},
        status=202,
    )


# --------------------------------------------------------------------------- OpenAPI


@routes.get(API_PREFIX + "/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """This API's OpenAPI 3.1 document (behind the same bearer token as the rest)."""
    return web.Response(body=openapi_document(), content_type="application/json")


@functools.cache
def openapi_document() -> bytes:
    """`bridge/openapi.json`, read once from the package."""
    return resources.files("bridge").joinpath("openapi.json").read_bytes()


def add_api_routes(app: web.Application) -> None:
    """Register the `/api/v1` handlers and their middleware."""
    app.middlewares.append(api_middleware)
    app.router.add_routes(routes)
