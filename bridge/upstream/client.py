"""The VisionMax "Fleet - Safety" V2 API client (UPSTREAM.md, SPEC §5).

`UpstreamClient` exposes one coroutine per vendor endpoint and returns raw vendor
items (dicts); normalization happens elsewhere. Authentication: a static token is
sent as is; with email/password the client logs in lazily on first use and, when
a call is refused with 401/403, logs in again once and repeats that call once.
A refused login backs off (1 min, doubling to 1 h; SPEC §5): the vendor may lock
an account that keeps trying a wrong password, so until then calls fail at once
without a request. Pacing, timeouts and retries live in `transport.Transport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

from bridge.clock import Clock, SystemClock
from bridge.settings import UpstreamSettings
from bridge.upstream.envelope import Reply, malformed, page_digest, parse_reply
from bridge.upstream.errors import UpstreamApiError, UpstreamAuthError, UpstreamError
from bridge.upstream.transport import Parser, Retry, Transport

log = structlog.get_logger(__name__)

AUTH = "/V2/auth"
AUTH_SWITCH = "/V2/auth/token-switch"
AUTH_VERIFY = "/V2/auth/token-verify"
EVENTS = "/V2/events"
EVENT_DETAIL = "/V2/event/detailV2"
VIDEO_DETAIL = "/V2/event/GetVideoDetail"
STORAGE_LIST = "/V2/event/StorageList"
VIDEO_CLIP = "/V2/event/videoClip/{sn}"  # endpoint labels are templates: bounded metrics
TASK_RESULT = "/V2/event/taskResult/{taskId}"
DISCARD = "/V2/event/discard"
SAFETY = "/V2/analytics/safety"


LOGIN_BACKOFF_S = 60.0
LOGIN_BACKOFF_MAX_S = 3600.0


@dataclass(frozen=True)
class LoginState:
    """The login back-off, for the status API."""

    failing: bool = False
    retry_at: float | None = None
    reason: str | None = None


PageMemo = Callable[[int], tuple[int, int | None] | None]
"""A page's digest → (entries, vendor total) when the caller needs the page unparsed
(it already holds all of it: `bridge.reseen.ReseenItems.known_page`), else None."""


@dataclass(frozen=True)
class Page:
    """One page of a list endpoint: raw vendor items and the vendor's total."""

    items: list[dict[str, Any]]
    count: int | None
    offset: int
    limit: int
    received: int = 0  # entries the vendor sent (objects or not)
    digest: int | None = None  # `page_digest` of the answer, when read with a memo
    known: bool = False  # the memo knew it: not parsed, `items` empty
    raw: bytes | None = field(default=None, repr=False)  # a known page's answer

    def parsed(self) -> Page:
        """A known page read in full after all (what the memo knew no longer holds)."""
        if self.raw is None:
            return self
        # The same bytes parsed as a success before: they do again (any 2xx status).
        reply = dataclasses.replace(parse_reply(EVENTS, 200, self.raw, None), digest=self.digest)
        return _page(reply, EVENTS, self.offset, self.limit)[0]


def _csv(values: Sequence[object]) -> str | None:
    return ",".join(str(v) for v in values) if values else None


def _params(**values: object) -> dict[str, str]:
    """Query parameters with None/empty dropped and booleans spelled `true`/`false`."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None or value == "":
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _count(body: Mapping[str, Any]) -> int | None:
    value = body.get("count")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


_HEADER_BREAKING = re.compile(r"[\r\n\x00]")


def _token_in(reply: Reply, endpoint: str) -> str:
    data = reply.data if isinstance(reply.data, dict) else {}
    problem = "the vendor answered without a token"
    for key in ("token", "access_token"):
        value = data.get(key)
        if isinstance(value, str) and value:
            if not _HEADER_BREAKING.search(value):
                return value
            # It is sent back as a header value, where it would split the request.
            problem = "the vendor's token holds a line break or NUL"
            break
    raise UpstreamAuthError(
        problem,
        endpoint=endpoint,
        status=reply.status,
        code=reply.body.get("code"),
        uq=reply.body.get("uq"),
    )


class UpstreamClient:
    """Typed access to the vendor API over one injected `aiohttp.ClientSession`."""

    def __init__(
        self,
        settings: UpstreamSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Clock | None = None,
        on_request: Callable[[str, str], None] | None = None,
        on_token: Callable[[str], None] | None = None,
        retry_base_delay_s: float = 0.5,
        retry_max_delay_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._transport = Transport(
            settings,
            session,
            self._clock,
            on_request=on_request,
            retry_base_delay_s=retry_base_delay_s,
            retry_max_delay_s=retry_max_delay_s,
            rng=rng or random.Random(),  # jitter, not cryptography
        )
        self._on_token = on_token
        static = settings.auth.token
        self._token: str | None = static.get_secret_value() if static is not None else None
        # Bumped whenever the token is replaced. A caller whose token was refused
        # logs in again only if the generation it used is still current: the vendor
        # may hand out the same token string again, so comparing strings is not enough.
        self._token_gen = 0
        self._can_login = static is None
        # One login at a time: concurrent callers that find no (or a rejected)
        # token wait here and reuse the token the first one obtained.
        self._login_lock = asyncio.Lock()
        self._login_failures = 0
        self.login_state = LoginState()

    def close(self) -> None:
        """Close the client's own idle connections (the session is its owner's)."""
        self._transport.close()

    @property
    def requests_made(self) -> int:
        """Every HTTP request sent so far, including retries, resends and logins."""
        return self._transport.requests_sent

    # ------------------------------------------------------------------ auth

    async def login(self) -> str:
        """Log in with email/password (then switch fleet if `auth.fleet_id`); returns the token."""
        async with self._login_lock:
            return await self._login_locked()

    async def token_switch(self, fleet_id: int) -> str:
        """Switch the current token to one fleet (revokes the old token); returns the new one."""
        token = await self._switch(fleet_id, relogin=True)
        self._set_token(token)
        return token

    async def verify_token(self) -> bool:
        """Whether the vendor accepts the current token (no re-login on refusal)."""
        try:
            await self._call("GET", AUTH_VERIFY, AUTH_VERIFY, Retry.IDEMPOTENT, relogin=False)
        except (UpstreamAuthError, UpstreamApiError):
            return False
        return True

    async def _login_locked(self) -> str:
        auth = self._settings.auth
        if auth.email is None or auth.password is None:
            raise UpstreamAuthError("no email/password configured to log in with", endpoint=AUTH)
        state = self.login_state
        if state.retry_at is not None and self._clock.now() < state.retry_at:
            raise UpstreamAuthError(f"{state.reason}; not trying again yet", endpoint=AUTH)
        body = {"email": auth.email, "password": auth.password.get_secret_value(), "type": "email"}
        try:
            reply = await self._transport.call(
                "POST", AUTH, AUTH, policy=Retry.IDEMPOTENT, token=None, json=body
            )
            token = _token_in(reply, AUTH)
        except (UpstreamAuthError, UpstreamApiError) as err:
            self._login_refused(err)
            raise
        if self._login_failures:
            log.info("upstream login works again", failed_logins=self._login_failures)
        self._login_failures = 0
        self.login_state = LoginState()
        self._emit_token(token)
        if auth.fleet_id is not None:
            # Switch before publishing the token, so no call runs with the wrong fleet.
            token = await self._switch(auth.fleet_id, relogin=False, token=token)
        self._set_token(token)
        log.info("upstream login succeeded", fleet_id=auth.fleet_id)
        return token

    def _login_refused(self, err: UpstreamError) -> None:
        """Back off after a refused login: 1 min, doubling to 1 h; logged once per streak."""
        self._login_failures += 1
        delay = min(LOGIN_BACKOFF_MAX_S, LOGIN_BACKOFF_S * 2.0 ** (self._login_failures - 1))
        reason = f"login refused ({err.status or err.code or 'no token'}): {err.message}"
        self.login_state = LoginState(
            failing=True, retry_at=self._clock.now() + delay, reason=reason
        )
        if self._login_failures == 1:
            log.error(
                "upstream login refused; backing off (1 min doubling to 1 h)",
                retry_in_s=delay,
                **err.log_fields(),
            )

    async def _switch(self, fleet_id: int, *, relogin: bool, token: str | None = None) -> str:
        reply = await self._call(
            "POST",
            AUTH_SWITCH,
            AUTH_SWITCH,
            Retry.UNSENT,
            form={"fleet_id": str(fleet_id)},
            relogin=relogin,
            token=token,
        )
        new = _token_in(reply, AUTH_SWITCH)
        self._emit_token(new)
        return new

    def _emit_token(self, token: str) -> None:
        if self._on_token is not None:
            self._on_token(token)

    def _set_token(self, token: str) -> None:
        self._token = token
        self._token_gen += 1

    async def _current_token(self) -> tuple[str, int]:
        if self._token is None:
            async with self._login_lock:
                if self._token is None:  # nobody logged in while we waited
                    await self._login_locked()
        assert self._token is not None
        return self._token, self._token_gen

    async def _relogin(self, rejected_gen: int) -> None:
        async with self._login_lock:
            if self._token_gen == rejected_gen:  # nobody replaced it while we waited
                await self._login_locked()

    async def _call(
        self,
        method: str,
        path: str,
        endpoint: str,
        policy: Retry,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        form: Mapping[str, str] | None = None,
        relogin: bool = True,
        token: str | None = None,
        parse: Parser | None = None,
    ) -> Reply:
        """An authenticated call; one re-login and repeat when the token is refused."""
        relogged = False
        while True:
            used, gen = (token, -1) if token is not None else await self._current_token()
            try:
                return await self._transport.call(
                    method, path, endpoint, policy=policy, token=used,
                    params=params, json=json, form=form, parse=parse,
                )  # fmt: skip
            except UpstreamAuthError as err:
                if relogged or token is not None or not relogin or not self._can_login:
                    raise
                relogged = True
                log.info("upstream token refused, logging in again", **err.log_fields())
                await self._relogin(gen)

    # ---------------------------------------------------------------- events

    async def list_events(
        self,
        *,
        since: int,
        until: int,
        offset: int = 0,
        limit: int | None = None,
        types: Sequence[int] = (),
        device_cids: Sequence[str] = (),
        serial_number: str | None = None,
        keyword: str | None = None,
        order: str = "ASC",
    ) -> Page:
        """One page of `GET /V2/events`, sorted by time."""
        page, _ = await self._events(
            since, until, offset, limit, types, device_cids, serial_number, keyword, order
        )
        return page

    async def iter_event_pages(
        self,
        *,
        since: int,
        until: int,
        offset: int = 0,
        limit: int | None = None,
        types: Sequence[int] = (),
        device_cids: Sequence[str] = (),
        serial_number: str | None = None,
        keyword: str | None = None,
        order: str = "ASC",
        prefetch: bool = False,
        memo: PageMemo | None = None,
    ) -> AsyncGenerator[Page, None]:
        """Every page of `GET /V2/events` for the window, until the list is exhausted.

        With `prefetch`, the next page is requested while the caller works on this one
        (for callers that read to the end: one request more than read if they stop
        early). Close the iterator (`contextlib.aclosing`) when stopping early.
        With `memo`, each answer's `page_digest` is looked up first: a page the memo
        knows is yielded unparsed (`known`, no items) with the paging facts it gave.
        """
        parse = None if memo is None else _memo_parser(memo)

        def fetch(off: int) -> Awaitable[tuple[Page, int]]:
            return self._events(
                since, until, off, limit, types, device_cids, serial_number, keyword, order, parse
            )

        # Closed here, not left to the garbage collector: its prefetch is cancelled
        # when our caller closes us.
        async with contextlib.aclosing(_walk(fetch, offset, prefetch=prefetch)) as pages:
            async for page in pages:
                yield page

    async def _events(
        self,
        since: int,
        until: int,
        offset: int,
        limit: int | None,
        types: Sequence[int],
        device_cids: Sequence[str],
        serial_number: str | None,
        keyword: str | None,
        order: str,
        parse: Parser | None = None,
    ) -> tuple[Page, int]:
        limit = limit or self._settings.page_size
        params = _params(
            since=since, until=until, sort="time", order=order, offset=offset, limit=limit,
            type=_csv(types), device_cids=_csv(device_cids),
            serial_number=serial_number, keyword=keyword,
        )  # fmt: skip
        reply = await self._call(
            "GET", EVENTS, EVENTS, Retry.IDEMPOTENT, params=params, parse=parse
        )
        return _page(reply, EVENTS, offset, limit)

    async def event_detail(self, ticket: str, *, retry: bool = True) -> list[dict[str, Any]]:
        """`GET /V2/event/detailV2`: the event's detail records (`retry=False`: one attempt)."""
        policy = Retry.IDEMPOTENT if retry else Retry.NEVER
        reply = await self._call(
            "GET", EVENT_DETAIL, EVENT_DETAIL, policy, params={"ticket": ticket}
        )
        data = reply.data
        if data is None:
            return []
        if isinstance(data, dict):
            return [data]
        if isinstance(data, list):
            return [item for item in data if isinstance(item, dict)]
        raise malformed(EVENT_DETAIL, "data is neither a list nor an object", reply)

    async def video_detail(self, ticket: str, *, retry: bool = True) -> dict[str, Any]:
        """`POST /V2/event/GetVideoDetail`: the event's video assets (`videos`).

        A read despite the POST, so it is retried like a GET; `retry=False` makes one
        attempt, for callers that retry later themselves.
        """
        policy = Retry.IDEMPOTENT if retry else Retry.NEVER
        reply = await self._call(
            "POST", VIDEO_DETAIL, VIDEO_DETAIL, policy, form={"ticket": ticket}
        )
        data = reply.data
        if data is None:
            return {"videos": []}
        if isinstance(data, list):
            return {"videos": data}
        if isinstance(data, dict):
            return data
        raise malformed(VIDEO_DETAIL, "data is not an object", reply)

    async def discard(self, ticket: str) -> None:
        """`POST /V2/event/discard`: discard an event (irreversible; never retried blindly)."""
        await self._call("POST", DISCARD, DISCARD, Retry.UNSENT, form={"ticket": ticket})

    # ----------------------------------------------------------- remote tasks

    async def storage_list(
        self,
        *,
        since: int,
        until: int,
        offset: int = 0,
        limit: int | None = None,
        types: Sequence[int] = (),
        task_states: Sequence[int] = (),
        time_lapse: bool | None = None,
        serial_number: str | None = None,
        keyword: str | None = None,
        order: str = "ASC",
    ) -> Page:
        """One page of `GET /V2/event/StorageList` (manual uploads), sorted by upload date."""
        page, _ = await self._storage(
            since, until, offset, limit, types, task_states, time_lapse,
            serial_number, keyword, order,
        )  # fmt: skip
        return page

    async def iter_storage_pages(
        self,
        *,
        since: int,
        until: int,
        offset: int = 0,
        limit: int | None = None,
        types: Sequence[int] = (),
        task_states: Sequence[int] = (),
        time_lapse: bool | None = None,
        serial_number: str | None = None,
        keyword: str | None = None,
        order: str = "ASC",
    ) -> AsyncIterator[Page]:
        """Every page of `GET /V2/event/StorageList` for the window."""

        def fetch(off: int) -> Awaitable[tuple[Page, int]]:
            return self._storage(
                since, until, off, limit, types, task_states, time_lapse,
                serial_number, keyword, order,
            )  # fmt: skip

        async for page in _walk(fetch, offset):
            yield page

    async def _storage(
        self,
        since: int,
        until: int,
        offset: int,
        limit: int | None,
        types: Sequence[int],
        task_states: Sequence[int],
        time_lapse: bool | None,
        serial_number: str | None,
        keyword: str | None,
        order: str,
    ) -> tuple[Page, int]:
        limit = limit or self._settings.page_size
        params = _params(
            since=since, until=until, sort="uploadDate", order=order, offset=offset,
            limit=limit, type=_csv(types), task_state_filter=_csv(task_states),
            time_lapse=time_lapse, serial_number=serial_number, keyword=keyword,
        )  # fmt: skip
        reply = await self._call("GET", STORAGE_LIST, STORAGE_LIST, Retry.IDEMPOTENT, params=params)
        return _page(reply, STORAGE_LIST, offset, limit)

    async def request_clip(
        self,
        sn: str,
        *,
        cam_id: str,
        file_name: str,
        target_timestamp: int,
        duration_s: int | None = 30,
        single_event: bool = True,
    ) -> str:
        """`POST /V2/event/videoClip/{sn}`: ask a device for a clip; returns the task id."""
        body: dict[str, Any] = {
            "cam_id": cam_id,
            "file_name": file_name,
            "target_timestamp": target_timestamp,
            "single_event": single_event,
        }
        if duration_s is not None:  # omitted: the vendor's default (30 s) applies
            body["duration_in_seconds"] = duration_s
        path = f"/V2/event/videoClip/{quote(sn, safe='')}"
        reply = await self._call("POST", path, VIDEO_CLIP, Retry.UNSENT, json=body)
        data = reply.data
        if isinstance(data, dict):
            for key in ("task_id", "taskId"):
                value = data.get(key)
                if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
                    return str(value)
        elif isinstance(data, str) and data:
            return data
        raise malformed(VIDEO_CLIP, "no task id in the answer", reply)

    async def task_result(self, task_id: str) -> dict[str, Any]:
        """`GET /V2/event/taskResult/{taskId}`: progress of a remote task."""
        path = f"/V2/event/taskResult/{quote(task_id, safe='')}"
        reply = await self._call("GET", path, TASK_RESULT, Retry.IDEMPOTENT)
        if not isinstance(reply.data, dict):
            raise malformed(TASK_RESULT, "data is not an object", reply)
        return reply.data

    # ---------------------------------------------------------------- reports

    async def safety_report(
        self, *, since: int, until: int, tz: str | None = None
    ) -> dict[str, Any]:
        """`GET /V2/analytics/safety`: `{"summary": …, "trend": …}` wherever the vendor put them."""
        params = _params(since=since, until=until, tz=tz)
        reply = await self._call("GET", SAFETY, SAFETY, Retry.IDEMPOTENT, params=params)
        source: Mapping[str, Any] = reply.body
        if isinstance(reply.data, dict) and ("summary" in reply.data or "trend" in reply.data):
            source = reply.data
        return {"summary": source.get("summary") or {}, "trend": source.get("trend") or []}


def _page(reply: Reply, endpoint: str, offset: int, limit: int) -> tuple[Page, int]:
    """A `Page` from a list answer, and how many entries the vendor really sent."""
    if reply.known is not None:
        received, count = reply.known
        page = Page([], count, offset, limit, received, reply.digest, known=True, raw=reply.raw)
        return page, received
    data = reply.data
    if data is None:
        data = []
    if not isinstance(data, list):
        # Returning an empty page here would end the scan and move the cursor past
        # items we never saw; failing is the safe choice.
        raise malformed(endpoint, "data is not a list", reply)
    items = [item for item in data if isinstance(item, dict)]
    page = Page(items, _count(reply.body), offset, limit, received=len(data), digest=reply.digest)
    return page, len(data)


def _memo_parser(memo: PageMemo) -> Parser:
    """`parse_reply` that first asks `memo` about a 2xx answer's digest."""

    def parse(endpoint: str, status: int, raw: bytes, retry_after: float | None) -> Reply:
        if not 200 <= status < 300:
            return parse_reply(endpoint, status, raw, retry_after)
        digest = page_digest(raw)
        known = memo(digest)
        if known is not None:
            # The same bytes parsed successfully before: the same success now.
            return Reply({}, None, True, status, digest=digest, known=known, raw=raw)
        return dataclasses.replace(parse_reply(endpoint, status, raw, retry_after), digest=digest)

    return parse


async def _walk(
    fetch: Callable[[int], Awaitable[tuple[Page, int]]], offset: int, *, prefetch: bool = False
) -> AsyncGenerator[Page, None]:
    """Page through a list: next offset = offset + entries received, until a short page.

    A short page ends the scan unless the vendor's `count` says more remain (a
    vendor that silently caps `limit` would otherwise make us skip items); an
    empty page always ends it. With `prefetch` the next page's request is under way
    while the caller handles this one (a catch-up then overlaps the vendor's latency
    with storing; the pages still come in order).
    """
    following: asyncio.Future[tuple[Page, int]] | None = None
    try:
        current: Awaitable[tuple[Page, int]] = fetch(offset)
        while True:
            page, received = await current
            offset += received
            last = received == 0 or (
                received < page.limit and (page.count is None or offset >= page.count)
            )
            if prefetch and not last:
                following = asyncio.ensure_future(fetch(offset))
            yield page
            if last:
                return
            current, following = following or fetch(offset), None
    finally:
        if following is not None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
