"""A lean HTTP/1.1 client: keep-alive connections to one origin.

Used for the bridge's hot requests: the webhook target's POSTs and the vendor
client's repeatable calls (the events pages read again on every poll,
GetVideoDetail). aiohttp's client spends ~65 µs of CPU per small request on general
machinery (request and response objects, header multidicts, a task per body write
on Python 3.11, timeout and trace plumbing), where this spends ~14 µs; on a 70 kB
events page ~127 µs against ~55 µs (docs/benchmarks.md). It does one thing: send a
request the caller has rendered to one origin and read the answer's status, headers
and body (up to a cap). Parsing is httptools (llhttp, the parser of Node.js);
sockets, TLS and name resolution are asyncio's. No redirects, proxies, cookies,
compression or HTTP/2 here: the callers need none of them (the vendor client decodes
gzip itself). A request that may be repeated (`resend_if_stale`) goes once more on a
new connection when a kept-alive one ends before a byte of its answer, as HTTP
clients do for idempotent requests.

A connection carries one request at a time and goes back to the pool only after its
answer was read to the end and the server did not ask to close it; anything else (a
timeout, a cancelled send, an unparsable answer, one longer than the cap) closes it,
so an answer can never be read as another request's.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
from typing import NamedTuple, cast

import httptools
from yarl import URL

MAX_HEADER_BYTES = 65536  # of an answer's header block; more closes the connection
IDLE_S = 15.0  # an idle connection older than this is closed, not reused (as aiohttp)
MAX_IDLE = 64  # idle connections kept per origin


class SendError(Exception):
    """The request failed; the message is safe to log (no URL, no header values)."""


class AnswerTooLarge(SendError):
    """The answer's body passed the pool's `max_body` (a pool that does not `cut`)."""


class NothingBack(SendError):
    """The connection ended before a byte of the answer came (on a kept-alive connection,
    most often the server closing it as idle just as it was reused)."""


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names; of a repeated header, the last
    body: bytes  # whole, or with `cut` its first `max_body` bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; the parser's callbacks are its methods."""

    def __init__(self, max_body: int, cut: bool) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._max_body = max_body
        self._cut = cut
        self._waiter: asyncio.Future[Answer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._answered = False  # a byte of the current request's answer has come
        self._new_answer()

    def _new_answer(self) -> None:
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._headers_done = False
        self._body: list[bytes] = []
        self._kept = 0
        self.reusable = False

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self._abort()  # bytes nobody asked for: this connection is out of step
            return
        self._answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(SendError("bad answer: protocol upgrade"))
        except httptools.HttpParserError as err:
            ours = err.__cause__ or err.__context__  # a callback's own error, wrapped
            self._fail(ours if isinstance(ours, SendError) else SendError(_bad_answer(err)))

    def eof_received(self) -> bool:
        self.closed = True
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._headers_done and (self._cut or self._ends_with_connection()):
                # An answer whose body runs to the end of the connection (or, to a
                # caller that only wants its status and first bytes, one cut short).
                self._finish(self.parser.get_status_code(), reusable=False)
            elif not self._answered:
                self._fail(NothingBack("connection failed: server disconnected"))
            else:
                self._fail(SendError("connection failed: server disconnected"))

    def _ends_with_connection(self) -> bool:
        # Without a length or chunked coding, the connection's end is the body's end;
        # with one, an end before it means the body was cut short.
        headers = self._headers
        return "content-length" not in headers and "transfer-encoding" not in headers

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            self._abort()  # a second answer to one request: this connection is out of step

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            raise SendError("bad answer: headers too large")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if not self._cut:
            length = self._headers.get("content-length", "")
            if length.isdigit() and int(length) > self._max_body:
                raise self._too_large()  # known before a byte of it is read

    def on_body(self, chunk: bytes) -> None:
        part = chunk[: self._max_body - self._kept]
        if len(part) < len(chunk) and not self._cut:
            raise self._too_large()
        self._body.append(part)
        self._kept += len(part)
        if len(part) < len(chunk):
            # More than the caller wants: the status is known and the rest is not
            # worth waiting for (it may never end); the connection goes with it.
            self._finish(self.parser.get_status_code(), reusable=False)
            self._abort()

    def _too_large(self) -> AnswerTooLarge:
        return AnswerTooLarge(f"bad answer: body over {self._max_body} bytes")

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._new_answer()  # informational (100 Continue, 103): the answer follows
            return
        self._finish(status, reusable=self.parser.should_keep_alive())

    # -- requests ----------------------------------------------------------------------

    async def request(self, data: bytes, deadline: float) -> Answer:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._new_answer()
        self._answered = False
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiter = waiter
        self._timer = loop.call_at(deadline, self._timed_out)
        self.transport.write(data)
        try:
            return await waiter
        finally:
            self._timer.cancel()
            self._waiter = None
            if not waiter.done() or waiter.cancelled():
                self._abort()  # the caller gave up (cancelled): the answer may still come

    def _timed_out(self) -> None:
        self._fail(TimeoutError())
        self._abort()

    def _finish(self, status: int, *, reusable: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self.reusable = reusable and not self.closed
        waiter.set_result(Answer(status, self._headers, b"".join(self._body)))

    def _fail(self, err: BaseException) -> None:
        waiter = self._waiter
        self.reusable = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(err)
        self._abort()

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def is_open(self) -> bool:
        # A transport can be closing before connection_lost has run.
        return self.transport is not None and not self.transport.is_closing()


class OriginPool:
    """Keep-alive connections to the origin of `url`.

    An answer's body is read up to `max_body` bytes: with `cut`, a longer one is cut
    there (its connection closed), else the send fails with `AnswerTooLarge`. The
    number of connections follows the number of concurrent sends, which the callers
    bound (a target's `max_in_flight`, the vendor client's pacing); at most MAX_IDLE
    are kept idle.
    """

    def __init__(
        self,
        url: URL,
        *,
        max_body: int,
        cut: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError("an http:// or https:// URL with a host is needed")
        self._host = url.raw_host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._tls = url.scheme == "https"
        self._ssl = ssl_context
        self._max_body = max_body
        self._cut = cut
        self._idle: list[_Connection] = []
        self._closed = False
        self.resent = 0  # requests sent again after a stale connection (`resend_if_stale`)
        self.host_line = f"host: {url.host_port_subcomponent}\r\n"
        # POST to the URL's own path and query (the webhook target's one request).
        target = url.raw_path_qs or "/"
        self.request_line = f"POST {target} HTTP/1.1\r\n{self.host_line}"

    async def send(
        self, head: bytes, body: bytes, within_s: float, *, resend_if_stale: bool = False
    ) -> Answer:
        """Send `head` (request line and headers, ending in an empty line) and `body`.

        With `resend_if_stale` (for requests that may be repeated), a kept-alive
        connection that ends before a byte of the answer came is taken for one the
        server closed as idle just then, and the request goes once more on a new
        connection (as HTTP clients do for idempotent requests).
        Raises SendError or TimeoutError; never answers with another request's answer.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        data = head + body
        conn = self._take_idle(loop.time())
        if conn is None:
            conn = await self._connect(deadline)
            answer = await _exchange(conn, data, deadline)
        else:
            try:
                answer = await _exchange(conn, data, deadline)
            except NothingBack:
                if not resend_if_stale:
                    raise
                self.resent += 1
                conn = await self._connect(deadline)
                answer = await _exchange(conn, data, deadline)
        if conn.reusable and not self._closed and len(self._idle) < MAX_IDLE:
            conn.idle_since = loop.time()
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    def _take_idle(self, now: float) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recent: the least likely closed by now
            if not conn.closed and now - conn.idle_since < IDLE_S and conn.is_open():
                return conn
            conn.close()
        return None

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        ssl_context = None
        if self._tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ssl_context = self._ssl
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._max_body, self._cut),
                    self._host,
                    self._port,
                    ssl=ssl_context,
                )
        except TimeoutError:  # an OSError too, but not a connection failure
            raise
        except ssl.SSLError as err:
            raise SendError(f"TLS error: {type(err).__name__}") from None
        except socket.gaierror:
            raise SendError("connection failed: host name not resolved") from None
        except OSError as err:
            raise SendError(_describe_os_error(err)) from None
        return conn

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _exchange(conn: _Connection, data: bytes, deadline: float) -> Answer:
    try:
        return await conn.request(data, deadline)
    except TimeoutError:  # an OSError too, but not a connection failure
        raise
    except OSError as err:
        raise SendError(_describe_os_error(err)) from None


def basic_auth(url: URL) -> str | None:
    """The Authorization value for credentials in a URL (as HTTP clients send them)."""
    if url.user is None:
        return None
    pair = f"{url.user}:{url.password or ''}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _describe_os_error(err: OSError) -> str:
    # asyncio's messages name the address ("Connect call failed (...)"); the errno
    # alone says what went wrong, and never carries the URL.
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {type(err).__name__}"
    reason = os.strerror(err.errno) if err.errno and err.errno > 0 else type(err).__name__
    return f"connection failed: {reason}"


def _bad_answer(err: Exception) -> str:
    # httptools says e.g. "Invalid header value char": short and free of the answer's bytes.
    text = str(err).split(":", 1)[0].strip()
    return f"bad answer: {text[:60] or type(err).__name__}"
