"""One HTTP exchange with the vendor, and the retry loop around it.

The transport owns what every call shares: the connections, the API-key header,
the per-call timeout, the client-side rate limit (with the `Retry-After` hold) and
the retry policy. It knows nothing about endpoints or about logging in;
`UpstreamClient` adds those.

Calls that may be repeated (`Retry.IDEMPOTENT`, `Retry.NEVER`: the events pages
above all, read again on every poll, and GetVideoDetail for every event with video)
go over keep-alive connections of the transport's own (`bridge.http1`: ~55 µs of CPU
for a 70 kB page against ~127 µs through aiohttp). Work-creating calls
(`Retry.UNSENT`) go over the injected aiohttp `ClientSession`, whose error types tell
a connection never made from a request that may have arrived. Both send the same
headers, refuse redirects, read at most MAX_RESPONSE_BYTES (decompressed) and turn
every failure into `UpstreamUnavailable`.

Retry policy (SPEC §5):

* `Retry.IDEMPOTENT` — reads (and login, token-verify, GetVideoDetail) are retried
  on any `UpstreamUnavailable`, with exponential backoff and full jitter, waiting
  at least `Retry-After` when the vendor gave one.
* `Retry.UNSENT` — work-creating POSTs (videoClip, discard, token-switch) are
  retried only when the vendor certainly did no work: the connection was never
  established (`ClientConnectorError`, connect timeout) or it answered 429. A
  timeout, 5xx or dropped connection after sending may have created the work, so
  it is raised at once rather than risking a duplicate clip or discard.
* `Retry.NEVER` — reads whose caller has its own, later retry (video links and
  detail while ingesting: an alert must not wait for in-call backoff).
"""

from __future__ import annotations

import enum
import json as _json
import random
import secrets
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog
from yarl import URL

from bridge import __version__
from bridge.clock import Clock
from bridge.http1 import Answer, AnswerTooLarge, OriginPool, SendError, basic_auth
from bridge.ratelimit import RateLimiter
from bridge.retry import backoff_delay, parse_retry_after
from bridge.settings import UpstreamSettings
from bridge.upstream.envelope import Reply, parse_reply
from bridge.upstream.errors import UpstreamRateLimited, UpstreamUnavailable

log = structlog.get_logger(__name__)

Parser = Callable[[str, int, bytes, float | None], Reply]
"""(endpoint, status, body, Retry-After) → `Reply`: `parse_reply` or a wrapper of it."""

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""Largest vendor answer read (a full events page is well under 1 MiB); past it the
call fails instead of the bridge buffering whatever a broken proxy streams."""

TOO_LARGE = f"response body over {MAX_RESPONSE_BYTES} bytes"

# Failures that happen before a single byte of the request reached the vendor.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)

USER_AGENT = f"fleet-bridge/{__version__}"
ACCEPT_ENCODING = "gzip, deflate"  # what aiohttp asks for too (without brotli installed)


class Retry(enum.Enum):
    """How a call may be repeated after a transient failure."""

    IDEMPOTENT = "idempotent"
    UNSENT = "unsent"
    NEVER = "never"


def _may_retry(err: UpstreamUnavailable, policy: Retry) -> bool:
    if policy is Retry.IDEMPOTENT:
        return True
    if policy is Retry.NEVER:
        return False
    return err.status == 429 or isinstance(err.__cause__, _NOT_SENT)


class Transport:
    """Sends requests to the vendor: headers, timeout, pacing, retries, error translation."""

    def __init__(
        self,
        settings: UpstreamSettings,
        session: aiohttp.ClientSession,
        clock: Clock,
        *,
        on_request: Callable[[str, str], None] | None,
        retry_base_delay_s: float,
        retry_max_delay_s: float,
        rng: random.Random,
    ) -> None:
        self._settings = settings
        self._session = session
        self._clock = clock
        self._on_request = on_request
        self._base_delay = retry_base_delay_s
        self._max_delay = retry_max_delay_s
        self._rng = rng
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._base = settings.base
        base = URL(settings.base, encoded=True)
        self._pool = OriginPool(base, max_body=MAX_RESPONSE_BYTES)
        # The head's lines that never change, rendered once (the aiohttp session
        # sends the same: its User-Agent, Accept, Accept-Encoding, URL credentials).
        fixed = [
            self._pool.host_line,
            f"user-agent: {USER_AGENT}\r\naccept: */*\r\naccept-encoding: {ACCEPT_ENCODING}\r\n",
            f"{settings.api_key_header}: {settings.api_key.get_secret_value()}\r\n",
        ]
        if (credentials := basic_auth(base)) is not None:
            fixed.append(f"authorization: {credentials}\r\n")
        self._fixed = "".join(fixed)
        self.limiter = RateLimiter(settings.max_requests_per_s, clock)
        self.requests_made = 0
        # Retries are logged once per failure streak (SPEC §5), not once per attempt.
        self._retrying = 0

    async def call(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        policy: Retry,
        token: str | None,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        form: Mapping[str, str] | None = None,
        parse: Parser | None = None,
    ) -> Reply:
        """Send one logical call, retrying transient failures as `policy` allows."""
        attempt = 0
        while True:
            try:
                reply = await self._send(
                    method, path, endpoint, token, params, json, form, parse or parse_reply, policy
                )
            except UpstreamUnavailable as err:
                if attempt >= self._settings.max_retries or not _may_retry(err, policy):
                    raise
                delay = backoff_delay(attempt + 1, self._base_delay, self._max_delay, self._rng)
                if isinstance(err, UpstreamRateLimited) and err.retry_after is not None:
                    if err.retry_after > self._max_delay:
                        raise  # too long to wait inside one call: let the caller reschedule
                    delay = max(delay, err.retry_after)
                attempt += 1
                self._retrying += 1
                if self._retrying == 1:
                    log.warning(
                        "upstream call failed, retrying",
                        attempt=attempt,
                        max_retries=self._settings.max_retries,
                        delay_s=round(delay, 3),
                        **err.log_fields(),
                    )
                await self._clock.sleep(delay)
            else:
                if self._retrying:
                    log.info("upstream answering again", retries=self._retrying)
                    self._retrying = 0
                return reply

    async def _send(
        self,
        method: str,
        path: str,
        endpoint: str,
        token: str | None,
        params: Mapping[str, str] | None,
        json: Any,
        form: Mapping[str, str] | None,
        parse: Parser,
        policy: Retry,
    ) -> Reply:
        held = self.limiter.hold_remaining()
        if held > self._max_delay:
            # A Retry-After longer than we would ever wait in-call: fail fast
            # instead of parking the caller (and its poll run) for that long.
            raise UpstreamRateLimited(
                "held back by an earlier Retry-After", retry_after=held, endpoint=endpoint
            )
        await self.limiter.acquire()
        self.requests_made += 1
        auth = None
        if token is not None:
            scheme = self._settings.auth_scheme
            auth = f"{scheme} {token}" if scheme else token
        if policy is not Retry.UNSENT:
            status, raw, retry_header = await self._lean(
                method, path, endpoint, auth, params, *_encoded_body(json, form)
            )
        else:
            status, raw, retry_header = await self._aiohttp(
                method, path, endpoint, auth, params, json, form
            )
        retry_after = parse_retry_after(retry_header, self._clock.now())
        self._record(endpoint, str(status))
        if retry_after is not None and status in (429, 503):
            self.limiter.hold(retry_after)
        return parse(endpoint, status, raw, retry_after)

    async def _lean(
        self,
        method: str,
        path: str,
        endpoint: str,
        auth: str | None,
        params: Mapping[str, str] | None,
        body: bytes,
        content_type: str | None,
    ) -> tuple[int, bytes, str | None]:
        """A call over the transport's own connections: (status, body, Retry-After)."""
        url = URL(self._base + path, encoded=True)
        if params:
            url = url.extend_query(params)  # percent-encoded as aiohttp would
        head = f"{method} {url.raw_path_qs} HTTP/1.1\r\n{self._fixed}"
        if auth is not None:
            head += f"{self._settings.auth_header}: {auth}\r\n"
        if content_type is not None:
            head += f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
        try:
            answer = await self._pool.send(
                (head + "\r\n").encode("utf-8"),
                body,
                self._settings.timeout_s,
                resend_if_stale=True,  # only calls that may be repeated come this way
            )
            body = _decoded(answer)
        except TimeoutError as err:  # an OSError too, but not a connection failure
            raise self._no_answer(endpoint, err) from err
        except AnswerTooLarge as err:
            self._record(endpoint, "too_large")
            raise UpstreamUnavailable(TOO_LARGE, endpoint=endpoint) from err
        except SendError as err:
            self._record(endpoint, "error")
            raise UpstreamUnavailable(str(err), endpoint=endpoint) from err
        return answer.status, body, answer.headers.get("retry-after")

    async def _aiohttp(
        self,
        method: str,
        path: str,
        endpoint: str,
        auth: str | None,
        params: Mapping[str, str] | None,
        json: Any,
        form: Mapping[str, str] | None,
    ) -> tuple[int, bytes, str | None]:
        """Any other call, over the injected aiohttp session: (status, body, Retry-After)."""
        headers = {self._settings.api_key_header: self._settings.api_key.get_secret_value()}
        if auth is not None:
            headers[self._settings.auth_header] = auth
        # A FormData is consumed by sending, so build a fresh one for each attempt.
        data = None
        if form is not None:
            data = aiohttp.FormData(default_to_multipart=True)
            for name, value in form.items():
                data.add_field(name, value)
        url = URL(self._base + path, encoded=True)
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                json=json,
                data=data,
                headers=headers,
                timeout=self._timeout,
                # Never follow a redirect: it would carry the API key header to
                # wherever the Location points.
                allow_redirects=False,
            ) as resp:
                status = resp.status
                try:
                    raw = await _read_capped(resp, endpoint)
                except UpstreamUnavailable:
                    self._record(endpoint, "too_large")
                    raise
                retry_header = resp.headers.get("Retry-After")
        except TimeoutError as err:  # also aiohttp's ServerTimeoutError family
            raise self._no_answer(endpoint, err) from err
        except aiohttp.ClientError as err:
            self._record(endpoint, "error")
            raise UpstreamUnavailable(f"{type(err).__name__}: {err}", endpoint=endpoint) from err
        return status, raw, retry_header

    def _no_answer(self, endpoint: str, err: TimeoutError) -> UpstreamUnavailable:
        self._record(endpoint, "timeout")
        return UpstreamUnavailable(
            f"no answer within {self._settings.timeout_s:g}s ({type(err).__name__})",
            endpoint=endpoint,
        )

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent: every attempt, and the resends on stale connections."""
        return self.requests_made + self._pool.resent

    def close(self) -> None:
        """Close the idle connections of the transport's pool (the session is its owner's)."""
        self._pool.close()

    def _record(self, endpoint: str, status: str) -> None:
        if self._on_request is not None:
            self._on_request(endpoint, status)


async def _read_capped(resp: aiohttp.ClientResponse, endpoint: str) -> bytes:
    """The body, or `UpstreamUnavailable` as soon as it is known to pass the cap."""
    too_big = UpstreamUnavailable(TOO_LARGE, endpoint=endpoint, status=resp.status)
    if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
        raise too_big
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise too_big
        parts.append(chunk)
    return b"".join(parts)


def _encoded_body(json: Any, form: Mapping[str, str] | None) -> tuple[bytes, str | None]:
    """A call's body and its Content-Type (None: no body), as aiohttp would send them."""
    if json is not None:
        return _json.dumps(json).encode("utf-8"), "application/json"
    if form is None:
        return b"", None
    # multipart/form-data (the vendor's forms, UPSTREAM.md); a random boundary cannot
    # occur in a value by chance, and a value is data within its part, line breaks too.
    boundary = secrets.token_hex(16)
    parts = [
        f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in form.items()
    ]
    parts.append(f"--{boundary}--\r\n")
    return "".join(parts).encode("utf-8"), f"multipart/form-data; boundary={boundary}"


def _decoded(answer: Answer) -> bytes:
    """The answer's body without its Content-Encoding, still within MAX_RESPONSE_BYTES.

    gzip and deflate (zlib-wrapped or, as some servers send it, raw) are what we ask
    for; a body that inflates past the cap fails as one that was sent that large.
    """
    coding = answer.headers.get("content-encoding", "").strip().lower()
    body = answer.body
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == "deflate":
        zlib_header = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    else:
        raise SendError("bad answer: unsupported content-encoding")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, MAX_RESPONSE_BYTES + 1)
    except zlib.error:
        raise SendError(f"bad answer: malformed {coding} body") from None
    if len(out) > MAX_RESPONSE_BYTES:
        raise AnswerTooLarge("bad answer: body over the limit once decompressed")
    if not inflater.eof:
        raise SendError(f"bad answer: {coding} body cut short")
    return out
