"""The Slack target (SPEC §6.2): an incoming webhook, or `chat.postMessage` with threads.

The message itself is built by `bridge.slack_format` (pure). This module puts it on
the wire and classifies Slack's answer; retries, the 1 msg/s rate limit and
Retry-After holds of the whole target are the dispatcher's job.

Incoming webhook: `POST webhook_url` with `{text, blocks}`; Slack answers `200 ok`
or an HTTP error with a short text code
(https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks):

    200                          ok
    429                          retryable; `Retry-After` holds the target
    408, 5xx, 3xx                retryable (redirects are not followed)
    other 4xx                    permanent: invalid_payload, no_service,
                                 channel_not_found, channel_is_archived, …

Bot token: `POST {api_base_url}/chat.postMessage` with `Authorization: Bearer`.
Slack answers HTTP 200 with `{"ok": true, "ts", "channel"}` or `{"ok": false,
"error"}`, and HTTP 429 with `Retry-After` when rate limited:

    ok: true                     ok; the first message of a ticket starts its thread
    429, ratelimited             retryable; `Retry-After` (default 1 s) holds the target
    error in PERMANENT_ERRORS    permanent: auth, permissions, channel, payload
    any other error              retryable: transient (internal_error, …) or unknown,
                                 and an unknown error must not lose a notification
    HTTP 408, 5xx, 3xx           retryable; other HTTP 4xx permanent

Threads: the `ts` of the first message posted for a ticket is kept in the store
(kind `slack_thread`, key `<target>:<ticket>`), so follow-ups (`event.updated`,
`clip.*`) are posted in its thread, across restarts. If Slack refuses the thread
(parent deleted, thread locked), the message is posted at the top level instead
and starts a new thread. An `event.group` (storm control) starts a thread for
the tickets it lists, so their follow-ups go under the message that carried them.

Error strings never carry the bot token or the webhook URL (which is a secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from yarl import URL

from bridge.clock import Clock, SystemClock
from bridge.display import zone
from bridge.notifications import dumps
from bridge.retry import parse_retry_after
from bridge.settings import SlackTarget
from bridge.slack_format import SlackMessage, format_message
from bridge.store.base import Delivery, IngestTx, Store, StoreUnavailable
from bridge.storm import GROUP_TYPE
from bridge.targets.base import SendResult

log = structlog.get_logger(__name__)

THREAD_KIND = "slack_thread"
"""Store kind of the thread ids; the key is `<target name>:<ticket>`."""

PERMANENT_ERRORS = frozenset(
    {
        # authentication and the app's standing
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "not_allowed_token_type",
        "access_denied",
        "accesslimited",
        "ekm_access_denied",
        "enterprise_is_restricted",
        "org_login_required",
        "team_access_not_granted",
        "two_factor_setup_required",
        "is_bot",
        # the channel
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "channel_is_archived",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "messages_tab_disabled",
        "posting_to_general_channel_denied",
        "action_prohibited",
        "no_service",
        "no_active_hooks",
        "user_not_found",
        # the request itself: sending it again cannot help
        "invalid_blocks",
        "invalid_blocks_format",
        "invalid_payload",
        "msg_too_long",
        "no_text",
        "too_many_attachments",
        "invalid_arguments",
        "invalid_arg_name",
        "invalid_array_arg",
        "invalid_charset",
        "invalid_form_data",
        "invalid_post_type",
        "missing_post_type",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "metadata_too_large",
        "as_user_not_supported",
        "method_deprecated",
        "deprecated_endpoint",
        "unknown_method",
    }
)
"""`ok: false` errors that no retry can fix. Anything else is retried."""

RATE_LIMIT_ERRORS = frozenset({"ratelimited", "rate_limited"})
THREAD_ERRORS = frozenset(
    {
        "thread_not_found",
        "invalid_thread_ts",
        "cannot_reply_to_message",
        "restricted_action_thread_locked",
        "restricted_action_non_threadable_channel",
    }
)
"""Errors of a reply whose thread cannot be used: post at the top level instead."""

DEFAULT_RATE_LIMIT_HOLD_S = 1.0  # Slack's posting limit is about one message per second
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # chat.postMessage echoes the message: up to ~1 MiB
ERROR_TEXT_CHARS = 120
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class _Posted:
    """One chat.postMessage call: its result and what Slack said."""

    result: SendResult
    ts: str | None = None
    channel: str | None = None
    error_code: str | None = None


class SlackSender:
    """Posts notifications to Slack over a shared `ClientSession`."""

    def __init__(
        self,
        cfg: SlackTarget,
        session: aiohttp.ClientSession,
        *,
        store: Store,
        clock: Clock | None = None,
    ) -> None:
        self.name = cfg.name
        self._session = session
        self._store = store
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._tz = zone(cfg.tz)
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        self._timeout_s = cfg.timeout_s
        self._channel = cfg.channel or ""
        self._webhook_url: URL | None = None
        self._api_url: URL | None = None
        self._headers = {"content-type": "application/json; charset=utf-8"}
        self._scrub: list[str] = []
        if cfg.webhook_url is not None:
            secret_url = cfg.webhook_url.get_secret_value()
            self._webhook_url = URL(secret_url)
            # The whole URL is the secret; its path alone too (a proxy may echo it).
            self._scrub += [secret_url, self._webhook_url.path, self._webhook_url.raw_path]
            self._scrub += [p for p in self._webhook_url.path.split("/") if len(p) >= 8]
        elif cfg.bot_token is not None:
            token = cfg.bot_token.get_secret_value()
            self._api_url = URL(str(cfg.api_base_url).rstrip("/") + "/chat.postMessage")
            self._headers["authorization"] = f"Bearer {token}"
            self._scrub.append(token)
        self._scrub = sorted({s for s in self._scrub if len(s) >= 4}, key=len, reverse=True)
        # One lock per ticket being sent: a follow-up waits for the first message of
        # its ticket to be posted, so it finds the thread's ts in the store.
        self._ticket_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def start(self) -> None:
        """Nothing to open: the session is shared and owned by the app."""

    async def close(self) -> None:
        """Nothing to close: the session is shared and owned by the app."""

    async def send(self, delivery: Delivery, envelope: Mapping[str, Any], body: str) -> SendResult:
        """Post one notification; classify the answer (never raises for delivery failures)."""
        message = format_message(envelope, tz=self._tz)
        if self._webhook_url is not None:
            return await self._send_webhook(self._webhook_url, message)
        assert self._api_url is not None  # settings guarantee one of the two
        if envelope.get("type") == GROUP_TYPE:
            return await self._send_group(self._api_url, envelope, message)
        ticket = thread_ticket(envelope)
        if ticket is None:
            return (await self._post(self._api_url, message, None, None)).result
        key = f"{self.name}:{ticket}"
        async with self._ticket_lock(key):
            return await self._send_in_thread(self._api_url, key, message)

    # -- bot mode ---------------------------------------------------------------------

    async def _send_in_thread(self, url: URL, key: str, message: SlackMessage) -> SendResult:
        try:
            thread = await self._store.get_json(THREAD_KIND, key)
        except StoreUnavailable:
            return SendResult(ok=False, error="store unavailable: cannot look up the Slack thread")
        thread_ts, channel = _thread_ref(thread)
        posted = await self._post(url, message, thread_ts, channel)
        if thread_ts is not None and posted.error_code in THREAD_ERRORS:
            log.warning(
                "slack thread unusable; posting at the top level",
                target=self.name,
                error=posted.error_code,
            )
            thread_ts = None
            posted = await self._post(url, message, None, None)
        if posted.result.ok and thread_ts is None and posted.ts:
            await self._remember_thread(key, posted.ts, posted.channel or self._channel)
        return posted.result

    async def _send_group(
        self, url: URL, envelope: Mapping[str, Any], message: SlackMessage
    ) -> SendResult:
        """An `event.group` starts a thread; its members' follow-ups go into it (§6.5)."""
        posted = await self._post(url, message, None, None)
        tickets = group_tickets(envelope)
        if not (posted.result.ok and posted.ts and tickets):
            return posted.result
        value = {"ts": posted.ts, "channel": posted.channel or self._channel}
        keys = [f"{self.name}:{ticket}" for ticket in tickets]

        async def remember(tx: IngestTx) -> None:
            for key in keys:
                # A member already posted alone keeps its own thread.
                if await tx.get_json(THREAD_KIND, key) is None:
                    await tx.put_json(THREAD_KIND, key, value)

        try:
            await self._store.ingest(remember)
        except StoreUnavailable as err:
            log.warning("could not store the slack thread id", target=self.name, error=str(err))
        return posted.result

    async def _remember_thread(self, key: str, ts: str, channel: str) -> None:
        value = {"ts": ts, "channel": channel}
        try:
            await self._store.ingest(lambda tx: tx.put_json(THREAD_KIND, key, value))
        except StoreUnavailable as err:
            # The message is out: failing the delivery would post it twice. Its
            # follow-ups start a thread of their own instead.
            log.warning("could not store the slack thread id", target=self.name, error=str(err))

    @contextlib.asynccontextmanager
    async def _ticket_lock(self, key: str) -> AsyncIterator[None]:
        lock, users = self._ticket_locks.get(key) or (asyncio.Lock(), 0)
        self._ticket_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._ticket_locks[key]
            if users <= 1:
                del self._ticket_locks[key]
            else:
                self._ticket_locks[key] = (lock, users - 1)

    async def _post(
        self, url: URL, message: SlackMessage, thread_ts: str | None, channel: str | None
    ) -> _Posted:
        payload: dict[str, Any] = {
            "channel": channel or self._channel,
            "text": message["text"],
            "blocks": message["blocks"],
            "unfurl_links": False,
        }
        if thread_ts is not None:
            payload["thread_ts"] = thread_ts
        try:
            async with self._session.post(
                url,
                data=dumps(payload).encode("utf-8"),
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                answer = await read_limited(resp, MAX_ANSWER_BYTES)
                return self._classify_api(resp.status, resp.headers, answer)
        except TimeoutError:
            return _Posted(SendResult(ok=False, error=f"timeout after {self._timeout_s:g}s"))
        except aiohttp.ClientError as err:
            return _Posted(SendResult(ok=False, error=describe_client_error(err)))

    def _classify_api(self, status: int, headers: Mapping[str, str], answer: bytes) -> _Posted:
        reply = _json_object(answer)
        code = _error_code(reply.get("error")) if reply is not None else None
        if status == 200 and reply is not None and reply.get("ok") is True:
            ts, channel = reply.get("ts"), reply.get("channel")
            return _Posted(
                SendResult.success(status),
                ts=ts if isinstance(ts, str) and ts else None,
                channel=channel if isinstance(channel, str) and channel else None,
            )
        if status == 429 or code in RATE_LIMIT_ERRORS:
            return _Posted(self._rate_limited(status, headers, code), error_code=code)
        if status == 200:
            if reply is None or reply.get("ok") is not False:
                error = self._error_text(status, None, answer, "unexpected answer")
                return _Posted(SendResult(ok=False, status=status, error=error))
            error = f"slack error: {code or 'unknown'}"
            permanent = code in PERMANENT_ERRORS
            result = SendResult(ok=False, status=status, error=error, retryable=not permanent)
            return _Posted(result, error_code=code)
        return _Posted(self._http_error(status, headers, code, answer), error_code=code)

    # -- webhook mode -----------------------------------------------------------------

    async def _send_webhook(self, url: URL, message: SlackMessage) -> SendResult:
        payload = {"text": message["text"], "blocks": message["blocks"]}
        try:
            async with self._session.post(
                url,
                data=dumps(payload).encode("utf-8"),
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                answer = await read_limited(resp, 2048)
                status, resp_headers = resp.status, resp.headers
        except TimeoutError:
            return SendResult(ok=False, error=f"timeout after {self._timeout_s:g}s")
        except aiohttp.ClientError as err:
            return SendResult(ok=False, error=describe_client_error(err))
        if 200 <= status < 300:
            return SendResult.success(status)
        text = answer.decode("utf-8", errors="replace").strip()
        code = _error_code(text)
        if status == 429:
            return self._rate_limited(status, resp_headers, code)
        return self._http_error(status, resp_headers, code, answer)

    # -- shared -----------------------------------------------------------------------

    def _rate_limited(
        self, status: int, headers: Mapping[str, str], code: str | None
    ) -> SendResult:
        retry_after = parse_retry_after(headers.get("Retry-After"), self._clock.now())
        return SendResult(
            ok=False,
            status=status,
            error=f"HTTP {status}: {code or 'rate limited'}",
            retry_after=DEFAULT_RATE_LIMIT_HOLD_S if retry_after is None else retry_after,
        )

    def _http_error(
        self, status: int, headers: Mapping[str, str], code: str | None, answer: bytes
    ) -> SendResult:
        error = self._error_text(status, code, answer)
        if status == 503:
            retry_after = parse_retry_after(headers.get("Retry-After"), self._clock.now())
            return SendResult(ok=False, status=status, error=error, retry_after=retry_after)
        if 300 <= status < 400:
            return SendResult(ok=False, status=status, error=f"{error} (redirect not followed)")
        permanent = 400 <= status < 500 and status != 408
        return SendResult(ok=False, status=status, error=error, retryable=not permanent)

    def _error_text(self, status: int, code: str | None, answer: bytes, default: str = "") -> str:
        """`HTTP <status>: <code or a short scrubbed snippet>`; never a secret."""
        if code is not None:
            return f"HTTP {status}: {code}"
        text = _WHITESPACE.sub(" ", answer[:2048].decode("utf-8", errors="replace")).strip()
        for secret in self._scrub:
            text = text.replace(secret, "***")
        text = text[:ERROR_TEXT_CHARS] or default
        return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def thread_ticket(envelope: Mapping[str, Any]) -> str | None:
    """The ticket a notification belongs to (its Slack thread), if any."""
    data = envelope.get("data")
    ticket = data.get("ticket") if isinstance(data, Mapping) else None
    if isinstance(ticket, str) and ticket.strip():
        return ticket.strip()
    return None


def group_tickets(envelope: Mapping[str, Any]) -> list[str]:
    """The tickets of an `event.group`'s listed members (their follow-ups join its thread)."""
    data = envelope.get("data")
    items = data.get("items") if isinstance(data, Mapping) else None
    tickets: list[str] = []
    for item in items if isinstance(items, list) else []:
        ticket = thread_ticket(item) if isinstance(item, Mapping) else None
        if ticket is not None and ticket not in tickets:
            tickets.append(ticket)
    return tickets


def _thread_ref(value: dict[str, Any] | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    ts, channel = value.get("ts"), value.get("channel")
    if not isinstance(ts, str) or not ts:
        return None, None
    return ts, channel if isinstance(channel, str) and channel else None


def _error_code(value: Any) -> str | None:
    """Slack's error code when it looks like one (`channel_not_found`); else None."""
    if isinstance(value, str) and _ERROR_CODE.fullmatch(value.strip()):
        return value.strip()
    return None


def _json_object(answer: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(answer)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to `limit` bytes of the answer; a small body read to the end keeps the
    connection reusable. The status is already known, so read errors are ignored."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = await resp.content.read(limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (TimeoutError, aiohttp.ClientError):
        pass
    return b"".join(chunks)


def describe_client_error(err: aiohttp.ClientError) -> str:
    """A short, secret-free description: aiohttp's own messages may carry the URL."""
    if isinstance(err, aiohttp.ClientSSLError):
        return f"TLS error: {type(err).__name__}"
    if isinstance(err, aiohttp.ClientConnectorDNSError):
        return "connection failed: host name not resolved"
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return "connection failed: server disconnected"
    if isinstance(err, aiohttp.ClientOSError):
        # asyncio's strerror names the address ("Connect call failed (...)"); the
        # errno alone says what went wrong.
        errno = err.os_error.errno if isinstance(err, aiohttp.ClientConnectorError) else err.errno
        reason = os.strerror(errno) if errno and errno > 0 else type(err).__name__
        return f"connection failed: {reason}"
    return f"request failed: {type(err).__name__}"
