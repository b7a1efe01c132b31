"""HTTP layer of the simulator: routes, auth, faults and the vendor envelope.

One middleware does, for every request: record it, check the API key and token,
inject a fault if one is due, bring the simulated world up to the clock, and turn
`ApiError` (or an unknown route) into a `result: false` envelope.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from multidict import MultiMapping

from bridge.simulator import push
from bridge.simulator.analytics import safety_report
from bridge.simulator.core import Simulator
from bridge.simulator.data import CAMERA_IDS, CLIP_TYPE, Event
from bridge.simulator.envelope import (
    BAD_API_KEY,
    BAD_CREDENTIALS,
    BAD_TOKEN,
    INTERNAL,
    NOT_FOUND,
    ApiError,
    bad_parameter,
    error,
    ok,
)
from bridge.simulator.eventlog import EventFilter
from bridge.simulator.faults import apply_fault

SIM_KEY = web.AppKey("simulator", Simulator)
STOPPING_KEY = web.AppKey("stopping", asyncio.Event)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_BAD_FILE_NAME = ("../", '"', "'", "&", "/", "\\", "?", "#", ":")  # from the seed
_MEDIA_URL_TTL_S = 3600
_FAKE_MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64


def _sim(request: web.Request) -> Simulator:
    return request.app[SIM_KEY]


def _ok(request: web.Request, data: Any, *, count: int | None = None) -> web.Response:
    return ok(_sim(request).new_uq(), data, count=count)


# ---- parameters ---------------------------------------------------------------------


def _int(query: MultiMapping[str], name: str, default: int | None = None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise bad_parameter(f"{name}: required")
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad_parameter(f"{name}: not an integer: {raw!r}") from None


def _csv(query: MultiMapping[str], name: str) -> list[str]:
    return [p.strip() for p in query.get(name, "").split(",") if p.strip()]


def _int_set(query: MultiMapping[str], name: str) -> frozenset[int]:
    try:
        return frozenset(int(p) for p in _csv(query, name))
    except ValueError:
        raise bad_parameter(f"{name}: expected comma-separated integers") from None


def _page(sim: Simulator, query: MultiMapping[str], sort_field: str) -> tuple[bool, int, int]:
    """(descending, offset, limit) of a list request."""
    sort = query.get("sort", sort_field)
    if sort != sort_field:
        raise bad_parameter(f"sort: unsupported field {sort!r} (available: {sort_field})")
    # The vendor's default order is undocumented; dashboards list newest first.
    order = query.get("order", "DESC").upper()
    if order not in ("ASC", "DESC"):
        raise bad_parameter(f"order: expected ASC or DESC, got {order!r}")
    offset = _int(query, "offset", 0)
    limit = _int(query, "limit", 5)
    if offset < 0 or not 0 <= limit <= sim.config.max_limit:
        raise bad_parameter(f"offset/limit: out of range (limit 0..{sim.config.max_limit})")
    return order == "DESC", offset, limit


def _window(query: MultiMapping[str]) -> tuple[int, int]:
    return _int(query, "since"), _int(query, "until")


async def _form_ticket(request: web.Request) -> str:
    form = await request.post()
    ticket = form.get("ticket")
    if not isinstance(ticket, str) or not ticket:
        raise bad_parameter("ticket: required (multipart form field)")
    return ticket


def _event(sim: Simulator, ticket: str) -> Event:
    event = sim.log.get(ticket)
    if event is None:
        raise ApiError(404, NOT_FOUND, f"event {ticket} not found")
    return event


# ---- middleware -------------------------------------------------------------------


def _check_auth(sim: Simulator, request: web.Request) -> None:
    cfg = sim.config
    if request.headers.get(cfg.api_key_header) != cfg.api_key:
        raise ApiError(401, BAD_API_KEY, "invalid or missing API key")
    if request.method == "POST" and request.path == "/V2/auth":
        return  # login needs the API key only
    raw = request.headers.get(cfg.auth_header, "")
    if cfg.auth_scheme:
        scheme, _, token = raw.partition(" ")
        if scheme.lower() != cfg.auth_scheme.lower():
            token = ""
    else:
        token = raw
    if not token or not sim.token_valid(token.strip()):
        raise ApiError(401, BAD_TOKEN, "invalid or expired access token")


def _token_of(sim: Simulator, request: web.Request) -> str:
    raw = request.headers.get(sim.config.auth_header, "")
    return raw.partition(" ")[2].strip() if sim.config.auth_scheme else raw.strip()


@web.middleware
async def _vendor_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    sim = _sim(request)
    sim.record(request.method, request.path, dict(request.query))
    if request.path.startswith("/media/"):
        return await handler(request)  # pre-signed download URLs: no auth, no faults
    # Keyed by route (e.g. `/V2/event/videoClip/{sn}`): bounded, whatever paths arrive.
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else "(unrouted)"
    sim.in_flight[path] += 1
    sim.peak_in_flight[path] = max(sim.peak_in_flight[path], sim.in_flight[path])
    try:
        return await _answer(sim, request, handler)
    finally:
        sim.in_flight[path] -= 1


async def _answer(sim: Simulator, request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        _check_auth(sim, request)
        kind = sim.next_fault(request.path)
        if kind is not None:
            faulted = await apply_fault(
                kind, request, sim.new_uq(), sim.config.faults, request.app[STOPPING_KEY]
            )
            if faulted is not None:
                return faulted
        sim.refresh()
        return await handler(request)
    except ApiError as err:
        return error(sim.new_uq(), err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(sim.new_uq(), ApiError(exc.status, f"E{exc.status}01", exc.reason))


# ---- auth ---------------------------------------------------------------------------


async def _login(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise bad_parameter("body: expected JSON {email, password, type}") from None
    if not isinstance(body, dict) or not body.get("email") or "password" not in body:
        raise bad_parameter("body: email and password are required")
    if body.get("type", "email") != "email":
        raise bad_parameter("type: only 'email' is supported")
    if body["password"] != sim.config.password:
        raise ApiError(401, BAD_CREDENTIALS, "wrong email or password")
    token = sim.login()
    return _ok(request, {"token": token, "fleets": [dict(f) for f in sim.FLEETS]})


async def _token_switch(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    form = await request.post()
    raw = form.get("fleet_id")
    try:
        fleet_id = int(raw) if isinstance(raw, str) else None
    except ValueError:
        fleet_id = None
    if fleet_id not in {f["id"] for f in sim.FLEETS}:
        raise bad_parameter(f"fleet_id: unknown fleet {raw!r}")
    assert fleet_id is not None
    token = sim.switch_token(_token_of(sim, request), fleet_id)
    return _ok(request, {"token": token, "fleet_id": fleet_id})


async def _token_verify(request: web.Request) -> web.StreamResponse:
    return _ok(request, {"valid": True})


# ---- events -------------------------------------------------------------------------


async def _events(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    q = request.query
    since, until = _window(q)
    descending, offset, limit = _page(sim, q, "time")
    flt = EventFilter(
        types=_int_set(q, "type"),
        device_cids=frozenset(_csv(q, "device_cids")),
        serial_number=q.get("serial_number", "").strip(),
        keyword=q.get("keyword", "").strip(),
    )
    total, page = sim.log.query(
        since, until, flt, descending=descending, offset=offset, limit=limit
    )
    return _ok(request, [e.item for e in page], count=total)


def _videos(request: web.Request, event: Event) -> list[dict[str, Any]]:
    return video_files(_sim(request), event, origin=f"{request.scheme}://{request.host}")


def video_files(sim: Simulator, event: Event, *, origin: str) -> list[dict[str, Any]]:
    """GetVideoDetail's `videos` for `event`: pre-signed URLs under `origin`, signed
    anew on every call (as the vendor does)."""
    if not event.has_video:
        return []
    expires = int(sim.now()) + _MEDIA_URL_TTL_S
    cams = event.cameras[: int(event.item["videos_count"])]
    signatures = sim.sign_media(event.ticket, cams, expires)
    return [
        {
            "cam_id": cam,
            "url": f"{origin}/media/{event.ticket}/{cam}.mp4?expires={expires}&signature={sig}",
            "duration": event.video_duration,
            "expires_at": expires,
        }
        for cam, sig in zip(cams, signatures, strict=True)
    ]


async def _detail(request: web.Request) -> web.StreamResponse:
    ticket = request.query.get("ticket", "")
    if not ticket:
        raise bad_parameter("ticket: required")
    event = _event(_sim(request), ticket)
    device = event.device
    detail = {
        **event.item,
        "serial_number": device.serial_number,
        "device_model": device.model,
        "vehicle_name": device.vehicle_name,
        "speed": event.speed,
        "gps": {"lat": event.item["lat"], "lng": event.item["lng"], "speed": event.speed},
        "capture_mode": list(device.cameras),
        "videos": _videos(request, event),
    }
    return _ok(request, [detail])


async def _video_detail(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    event = _event(sim, await _form_ticket(request))
    sim.video_detail_calls[event.ticket] += 1
    if event.ticket in sim.failing_video_details:
        raise ApiError(500, INTERNAL, "simulated GetVideoDetail failure")
    return _ok(request, {"ticket": event.ticket, "videos": _videos(request, event)})


async def _discard(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    ticket = await _form_ticket(request)
    if sim.log.discard(ticket) is None:
        raise ApiError(404, NOT_FOUND, f"event {ticket} not found")
    return _ok(request, {"ticket": ticket})


async def _media(request: web.Request) -> web.StreamResponse:
    if _sim(request).log.get(request.match_info["ticket"]) is None:
        raise web.HTTPNotFound()
    return web.Response(body=_FAKE_MP4, content_type="video/mp4")


# ---- clip tasks ---------------------------------------------------------------------


def _clip_request(body: Any) -> tuple[str, str, int, bool, int]:
    """Validate a videoClip body as the seed documents it."""
    if not isinstance(body, dict):
        raise bad_parameter("body: expected a JSON object")
    cam_id = body.get("cam_id")
    if not isinstance(cam_id, str) or not cam_id:
        raise bad_parameter("cam_id: required, non-empty")
    if cam_id != "ALL" and cam_id not in CAMERA_IDS:
        raise bad_parameter(f"cam_id: unknown camera {cam_id!r}")
    file_name = body.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise bad_parameter("file_name: required, non-empty")
    if any(bad in file_name for bad in _BAD_FILE_NAME):
        raise bad_parameter("file_name: must not contain ../ \" ' & / \\ ? # :")
    target = body.get("target_timestamp")
    if not isinstance(target, int) or isinstance(target, bool):
        raise bad_parameter("target_timestamp: required integer")
    single = body.get("single_event", True)
    if not isinstance(single, bool):
        raise bad_parameter("single_event: expected a boolean")
    duration = body.get("duration_in_seconds", 30)
    if duration is None:
        duration = 30
    if not isinstance(duration, int) or isinstance(duration, bool) or not 1 <= duration <= 86400:
        raise bad_parameter("duration_in_seconds: expected an integer in 1..86400")
    # "processed into an even number, then evenly divided around target_timestamp"
    duration += duration % 2
    return cam_id, file_name, target, single, duration


async def _video_clip(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise bad_parameter("body: expected JSON") from None
    cam_id, file_name, target, single, duration = _clip_request(body)
    sn = request.match_info["sn"]
    device = sim.device(sn)
    if device is None:
        raise ApiError(404, NOT_FOUND, f"device {sn} not found")
    task = sim.create_task(
        device,
        cam_id=cam_id,
        file_name=file_name,
        target_timestamp=target,
        duration=duration,
        single_event=single,
    )
    return _ok(request, {"task_id": task.task_id})


async def _task_result(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    task = sim.tasks.get(request.match_info["task_id"])
    if task is None:
        raise ApiError(404, NOT_FOUND, "task not found")
    return _ok(request, task.result(sim.now()))


async def _storage_list(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    q = request.query
    since, until = _window(q)
    descending, offset, limit = _page(sim, q, "uploadDate")
    types = _int_set(q, "type")
    states = _int_set(q, "task_state_filter")
    serial = q.get("serial_number", "").strip()
    keyword = q.get("keyword", "").strip()
    now = sim.now()
    # Tasks are few and created in clock order, so a scan in creation order is enough.
    matching = [
        t
        for t in sim.tasks.values()
        if since <= int(t.created_at) <= until
        and (not types or CLIP_TYPE in types)
        and (not states or t.state_at(now) in states)
        and (not serial or t.device.serial_number == serial)
        and (not keyword or t.matches_keyword(keyword))
    ]
    if descending:
        matching.reverse()
    page = [t.storage_item(now) for t in matching[offset : offset + limit]]
    return _ok(request, page, count=len(matching))


# ---- analytics ----------------------------------------------------------------------


async def _safety(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    since, until = _window(request.query)
    tz_name = request.query.get("tz", "") or "UTC"
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad_parameter(f"tz: unknown time zone {tz_name!r}") from None
    return _ok(request, safety_report(sim.log.window(since, until), tz))


# ---- the application ----------------------------------------------------------------


async def _on_shutdown(app: web.Application) -> None:
    # Wake requests parked in a "slow"/"timeout" fault, so shutdown never waits for them.
    app[STOPPING_KEY].set()


def build_app(sim: Simulator) -> web.Application:
    """The aiohttp application serving `sim`."""
    app = web.Application(middlewares=[_vendor_middleware])
    app[SIM_KEY] = sim
    app[STOPPING_KEY] = asyncio.Event()
    app.on_shutdown.append(_on_shutdown)
    if sim.config.push_url:
        app.cleanup_ctx.append(push.pusher_ctx(sim))
    r = app.router
    r.add_post("/V2/auth", _login)
    r.add_post("/V2/auth/token-switch", _token_switch)
    r.add_get("/V2/auth/token-verify", _token_verify)
    r.add_get("/V2/events", _events)
    r.add_get("/V2/event/detailV2", _detail)
    r.add_post("/V2/event/GetVideoDetail", _video_detail)
    r.add_get("/V2/event/StorageList", _storage_list)
    r.add_post("/V2/event/videoClip/{sn}", _video_clip)
    r.add_get("/V2/event/taskResult/{task_id}", _task_result)
    r.add_post("/V2/event/discard", _discard)
    r.add_get("/V2/analytics/safety", _safety)
    r.add_get("/media/{ticket}/{cam}.mp4", _media)
    return app
