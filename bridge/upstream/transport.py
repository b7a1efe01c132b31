"""One HTTP exchange with the vendor, and the retry loop around it.

The transport owns what every call shares: the injected `ClientSession`, the
API-key header, the per-call timeout, the client-side rate limit (with the
`Retry-After` hold) and the retry policy. It knows nothing about endpoints or
about logging in; `UpstreamClient` adds those.

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
import random
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog
from yarl import URL

from bridge.clock import Clock
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

# Failures that happen before a single byte of the request reached the vendor.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


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
                    method, path, endpoint, token, params, json, form, parse or parse_reply
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
    ) -> Reply:
        held = self.limiter.hold_remaining()
        if held > self._max_delay:
            # A Retry-After longer than we would ever wait in-call: fail fast
            # instead of parking the caller (and its poll run) for that long.
            raise UpstreamRateLimited(
                "held back by an earlier Retry-After", retry_after=held, endpoint=endpoint
            )
        await self.limiter.acquire()
        headers = {self._settings.api_key_header: self._settings.api_key.get_secret_value()}
        if token is not None:
            scheme = self._settings.auth_scheme
            headers[self._settings.auth_header] = f"{scheme} {token}" if scheme else token
        # A FormData is consumed by sending, so build a fresh one for each attempt.
        data = None
        if form is not None:
            data = aiohttp.FormData(default_to_multipart=True)
            for name, value in form.items():
                data.add_field(name, value)
        url = URL(self._base + path, encoded=True)
        self.requests_made += 1
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
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock.now())
        except TimeoutError as err:  # also aiohttp's ServerTimeoutError family
            self._record(endpoint, "timeout")
            raise UpstreamUnavailable(
                f"no answer within {self._settings.timeout_s:g}s ({type(err).__name__})",
                endpoint=endpoint,
            ) from err
        except aiohttp.ClientError as err:
            self._record(endpoint, "error")
            raise UpstreamUnavailable(f"{type(err).__name__}: {err}", endpoint=endpoint) from err
        self._record(endpoint, str(status))
        if retry_after is not None and status in (429, 503):
            self.limiter.hold(retry_after)
        return parse(endpoint, status, raw, retry_after)

    def _record(self, endpoint: str, status: str) -> None:
        if self._on_request is not None:
            self._on_request(endpoint, status)


async def _read_capped(resp: aiohttp.ClientResponse, endpoint: str) -> bytes:
    """The body, or `UpstreamUnavailable` as soon as it is known to pass the cap."""
    too_big = UpstreamUnavailable(
        f"response body over {MAX_RESPONSE_BYTES} bytes", endpoint=endpoint, status=resp.status
    )
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
