"""The listening socket of `fleet-bridge run`: `CappedTCPSite`.

- Past `max_connections` open connections, a new one gets a JSON 503 with
  `Retry-After` and is closed, so a flood of (slow or idle) clients cannot exhaust
  file descriptors and memory.
- A new connection must deliver its first request's headers within
  `header_timeout_s` (else a JSON 408 and it is closed), so slow clients cannot hold
  the slots either.
- A few connections past the cap are kept for the probes (`/healthz`, `/readyz`,
  `/metrics`): a flood of pushes or API calls must not get a healthy pod restarted
  by the kubelet or blind its monitoring.

The answers here are written as raw bytes: they go out before (or instead of)
aiohttp's request handling.
"""

from __future__ import annotations

import asyncio
import json
from typing import Final, cast

from aiohttp import web


def _json_answer(status: str, code: str, message: str, *headers: str) -> bytes:
    """A whole HTTP/1.1 answer with a JSON error body, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", *headers]
    head += ["Connection: close", f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(head).encode() + body


BUSY_RESPONSE: Final = _json_answer(
    "503 Service Unavailable", "unavailable", "too many connections", "Retry-After: 1"
)
SLOW_RESPONSE: Final = _json_answer(
    "408 Request Timeout", "request_timeout", "request headers not received in time"
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


def _refuse(transport: asyncio.WriteTransport) -> asyncio.TimerHandle:
    """Answer 503 and half-close; the returned timer closes the socket.

    The answer is followed by a FIN, and the socket is closed when the client closes
    its side (or after `BUSY_LINGER_S`): closing at once, with the client's request
    unread, would send a reset that can destroy the answer before it is read.
    """
    transport.write(BUSY_RESPONSE)
    if transport.can_write_eof():
        transport.write_eof()
    return asyncio.get_running_loop().call_later(BUSY_LINGER_S, transport.close)


class _Busy(asyncio.Protocol):
    """Answers 503 at once and hangs up; whatever the client sends is discarded."""

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: see _HeaderDeadline.
        self._timer = _refuse(cast(asyncio.WriteTransport, base))

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: the answer is 503 whatever it is

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


# Connections past the cap kept for the probes. The kubelet's liveness, readiness and
# startup probes and a Prometheus scrape or two come at once; more than that at a time
# is no probe traffic.
PROBE_CONNECTIONS: Final = 8
# A probe sends its request as soon as it connects; an idle connection in the reserve
# is refused after this, so idle clients cannot keep the probes out for long.
PROBE_HEADERS_S: Final = 2.0
_PROBE_HEAD_MAX: Final = 8192


def probe_request(head: bytes, paths: frozenset[str]) -> bool:
    """Whether a request line (without CRLF) is a GET or HEAD of one of `paths`."""
    parts = head.split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
        return False
    path = parts[1].partition(b"?")[0]
    return path.decode("latin-1") in paths and parts[2].startswith(b"HTTP/1.")


def closing_request(head: bytes) -> bytes:
    """A request head (up to and without its blank line) that asks to close after the
    answer: any `Connection` header replaced with `Connection: close`."""
    first, *fields = head.split(b"\r\n")
    kept = [f for f in fields if f.partition(b":")[0].strip().lower() != b"connection"]
    return b"\r\n".join([first, *kept, b"Connection: close", b"", b""])


class _ProbeOnly(asyncio.Protocol):
    """A connection past the cap: served only if it is a probe, one request, then closed.

    The request head is read here; a GET or HEAD of a probe path goes to aiohttp with
    `Connection: close` (what the kubelet sends anyway), so the connection serves that
    one answer and no other request can follow on it. Anything else gets the 503.
    """

    def __init__(self, site: CappedTCPSite) -> None:
        self._site = site
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.WriteTransport | None = None
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None

    @property
    def served(self) -> bool:
        """Handed to aiohttp (and so counted among its connections)."""
        return self._inner is not None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, base)  # see _HeaderDeadline
        self._timer = asyncio.get_running_loop().call_later(
            self._site.probe_headers_s, self._turn_away
        )

    def _turn_away(self) -> None:
        """Not a probe (or not in time): the 503 of a full server."""
        # Out of the reserve at once: a refused connection may linger for a while
        # (BUSY_LINGER_S), and a flood of them must not keep the probes out.
        self._site.probe_ended(self)
        self._buffer = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport, self._transport = self._transport, None  # the rest is discarded
        if transport is not None and not transport.is_closing():
            self._site.refused += 1
            self._timer = _refuse(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None or self._transport is None:
            return  # served (one request only), or refused
        self._buffer += data
        line, crlf, _ = self._buffer.partition(b"\r\n")
        if crlf and not probe_request(line, self._site.probe_paths):
            self._turn_away()  # at once: no need to wait for the rest of its head
            return
        head, blank, _ = self._buffer.partition(b"\r\n\r\n")
        if not blank:
            if len(self._buffer) > _PROBE_HEAD_MAX:
                self._turn_away()
            return
        # Whatever follows the head is dropped: a probe has no body, and a pipelined
        # second request would go past the cap.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buffer = b""
        self._inner = self._site.handler()
        self._inner.connection_made(self._transport)
        self._inner.data_received(closing_request(head))

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return False  # gone before asking anything: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._site.probe_ended(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class CappedTCPSite(web.BaseSite):
    """A TCP site serving `runner` on at most `max_connections` connections at once,
    and on up to `probe_connections` more for GET or HEAD of `probe_paths` only."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        header_timeout_s: float,
        probe_paths: frozenset[str] = frozenset(),
        probe_connections: int = PROBE_CONNECTIONS,
        probe_headers_s: float = PROBE_HEADERS_S,
    ) -> None:
        super().__init__(runner)
        server = runner.server
        assert server is not None  # BaseSite checked that setup() ran
        self._web_server = server
        self._host = host
        self._port = port
        self._max = max_connections
        self._header_timeout_s = header_timeout_s
        self.probe_paths = probe_paths
        self._probe_max = probe_connections if probe_paths else 0
        self.probe_headers_s = probe_headers_s
        self._probes: set[_ProbeOnly] = set()
        self.refused = 0

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        return self._port

    @property
    def probes(self) -> int:
        """Connections open past the cap: probes, or not yet known to be none."""
        return len(self._probes)

    def handler(self) -> asyncio.Protocol:
        """A new aiohttp request handler for one connection."""
        return self._web_server()

    def probe_ended(self, probe: _ProbeOnly) -> None:
        """`probe` no longer holds a place in the reserve."""
        self._probes.discard(probe)

    def _protocol(self) -> asyncio.BaseProtocol:
        # Probes served past the cap are among aiohttp's connections too; they do not
        # take the place of an ordinary one.
        served = sum(1 for p in self._probes if p.served)
        if len(self._web_server.connections) - served < self._max:
            return _HeaderDeadline(self.handler(), self._header_timeout_s)
        if len(self._probes) < self._probe_max:
            probe = _ProbeOnly(self)
            self._probes.add(probe)
            return probe
        self.refused += 1
        return _Busy()

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._protocol, self._host, self._port)
        self._server = server
        if server.sockets:  # port 0: the one the system chose
            self._port = int(server.sockets[0].getsockname()[1])
