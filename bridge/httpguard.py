"""Defences every HTTP route shares, so nothing a client sends makes a traceback.

- `tokens_match`: constant-time token comparison that never raises, whatever bytes
  arrive in a header (aiohttp hands non-UTF-8 header bytes over as lone surrogates).
- `read_body`: a request body read with a size cap and a deadline; the `BodyError` it
  raises becomes a JSON 413 / 408 in `guard_middleware`, which then drops the
  connection, so a client trickling a body cannot hold a connection for minutes.
- `guard_middleware`: the outermost middleware. It turns every error on every path —
  aiohttp's own 404/405/413, or a crash — into the JSON `{"error": {"code", "message"}}`,
  keeping headers such as `Allow` on a 405.
- `CappedTCPSite`: the listening socket of `fleet-bridge run`. Past `max_connections`
  open connections, a new one gets a JSON 503 with `Retry-After` and is closed, so a
  flood of (slow or idle) clients cannot exhaust file descriptors and memory; and a
  new connection must deliver its first request's headers within `header_timeout_s`
  (else a JSON 408 and it is closed), so slow clients cannot hold the slots either.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any, Final, cast

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

log = structlog.get_logger(__name__)


STATUS_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    502: "upstream_error",
    503: "unavailable",
}
# Headers of an aiohttp HTTPException worth keeping on its JSON replacement.
_KEPT_HEADERS: Final = ("Allow", "Retry-After", "WWW-Authenticate")
_CHUNK: Final = 65536


class BodyError(Exception):
    """A request body we could not read: too large or too slow."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_error(
    status: int, code: str, message: str, *, field: str | None = None, **headers: str
) -> web.Response:
    """`{"error": {"code", "message"[, "field"]}}` with `status`."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status, headers=headers or None)


def tokens_match(given: str | None, want: str) -> bool:
    """`given == want` in constant time; False (never an exception) for any input."""
    if given is None:
        return False
    # surrogateescape turns the lone surrogates aiohttp made of undecodable bytes back
    # into those bytes; they simply do not match.
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), want.encode("utf-8", "surrogateescape")
    )


async def read_body(request: web.Request, *, limit: int, timeout_s: float) -> bytes:
    """The whole body; `BodyError` 413 past `limit` bytes, 408 when not in within `timeout_s`."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(413, "body_too_large", f"body over {limit} bytes")
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise BodyError(413, "body_too_large", f"body over {limit} bytes")
                parts.append(chunk)
    except TimeoutError:
        raise BodyError(
            408, "request_timeout", f"body not received within {timeout_s:g} s"
        ) from None
    return b"".join(parts)


def guard_middleware() -> Middleware:
    """The outermost middleware: JSON for every error, on every path."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BodyError as err:
            # Answer, then drop the connection: aiohttp would otherwise keep reading
            # ("lingering") the rest of a slow or oversized body for another 10 s.
            resp = json_error(err.status, err.code, err.message)
            resp.force_close()
            await resp.prepare(request)
            await resp.write_eof()
            request.protocol.force_close()
            return resp
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {h: exc.headers[h] for h in _KEPT_HEADERS if h in exc.headers}
            return json_error(
                exc.status, STATUS_CODES.get(exc.status, "error"), exc.reason, **headers
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP handler crashed", path=request.path, method=request.method)
            return json_error(500, "internal", "internal error (logged)")

    return guard


_BUSY: Final = json.dumps(
    {"error": {"code": "unavailable", "message": "too many connections"}}
).encode()
BUSY_RESPONSE: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)


_SLOW: Final = json.dumps(
    {"error": {"code": "request_timeout", "message": "request headers not received in time"}}
).encode()
SLOW_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/json\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_SLOW)).encode() + b"\r\n\r\n" + _SLOW
)


class _HeaderDeadline(asyncio.Protocol):
    """Passes everything to aiohttp's handler; hangs up (408) unless the first request's
    headers are in within `timeout_s`. aiohttp itself has no deadline for them; later
    requests on the connection fall under its keep-alive timeout."""

    def __init__(self, inner: asyncio.Protocol, timeout_s: float) -> None:
        self._inner = inner
        self._timeout_s = timeout_s
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports write like asyncio's
        # but do not subclass asyncio.WriteTransport.
        self._transport = cast(asyncio.WriteTransport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._timeout_s, self._expire)
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(SLOW_RESPONSE)
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._tail = (self._tail + data)[-65536:]
            if b"\r\n\r\n" in self._tail:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


BUSY_LINGER_S: Final = 2.0


class _Busy(asyncio.Protocol):
    """Answers 503 at once and hangs up; whatever the client sends is discarded.

    The answer is followed by a FIN, and the socket is closed when the client closes
    its side (or after `BUSY_LINGER_S`): closing at once, with the client's request
    unread, would send a reset that can destroy the answer before it is read.
    """

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.WriteTransport, base)  # uvloop's too: see _HeaderDeadline
        transport.write(BUSY_RESPONSE)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(BUSY_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: the answer is 503 whatever it is

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class CappedTCPSite(web.BaseSite):
    """A TCP site serving `runner` on at most `max_connections` connections at once."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        header_timeout_s: float,
    ) -> None:
        super().__init__(runner)
        server = runner.server
        assert server is not None  # BaseSite checked that setup() ran
        self._web_server = server
        self._host = host
        self._port = port
        self._max = max_connections
        self._header_timeout_s = header_timeout_s
        self.refused = 0

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        return self._port

    def _protocol(self) -> asyncio.BaseProtocol:
        if len(self._web_server.connections) >= self._max:
            self.refused += 1
            return _Busy()
        return _HeaderDeadline(self._web_server(), self._header_timeout_s)

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._protocol, self._host, self._port)
        self._server = server
        if server.sockets:  # port 0: the one the system chose
            self._port = int(server.sockets[0].getsockname()[1])
