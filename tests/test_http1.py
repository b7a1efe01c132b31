"""The bridge's HTTP/1.1 client (webhook POSTs, vendor GETs) against scripted servers,
on asyncio and uvloop.

Each server here is a plain asyncio server that answers with exactly the bytes a test
scripts, so the client meets what real receivers do: keep-alive and closing idle
connections, chunked and close-delimited answers, informational answers, garbage,
silence, and TLS. The rule under test throughout: an answer is never read as another
request's, and a connection in doubt is closed rather than reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
import uvloop
from yarl import URL

from bridge.http1 import Answer, AnswerTooLarge, NothingBack, OriginPool, SendError

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Runs a test's coroutine on the stock loop and on uvloop (the service's loop)."""
    return asyncio.run if request.param == "asyncio" else uvloop.run  # type: ignore[return-value]


@dataclass
class Script:
    """A server that hands each accepted connection to `serve(reader, writer, n)`."""

    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    closed: int = 0  # connections the client closed (EOF seen by the server)
    server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.serve(reader, writer, self.connections)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
        return int(self.server.sockets[0].getsockname()[1])

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return await reader.readexactly(length)

    async def wait_for_eof(self, reader: asyncio.StreamReader) -> None:
        await reader.read()  # until the client closes
        self.closed += 1

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def pool_for(port: int, path: str = "/hook", **kw: Any) -> OriginPool:
    return OriginPool(URL(f"http://127.0.0.1:{port}{path}"), max_body=64, cut=True, **kw)


@contextlib.asynccontextmanager
async def pool_on(script: Script, path: str = "/hook") -> AsyncIterator[OriginPool]:
    """A pool for the script's server, both closed at the end."""
    pool = pool_for(await script.start(), path)
    try:
        yield pool
    finally:
        pool.close()
        await script.stop()


async def post(pool: OriginPool, body: bytes = b"{}", timeout: float = 5.0) -> Answer:
    head = f"{pool.request_line}content-length: {len(body)}\r\n\r\n".encode()
    return await pool.send(head, body, within_s=timeout)


def answering(*answers: bytes) -> Callable[..., Awaitable[None]]:
    """Per connection: read a request, write the next answer, until they run out."""

    async def serve(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, script: Script
    ) -> None:
        for answer in answers:
            await script.read_request(reader)
            writer.write(answer)
            await writer.drain()
        await script.wait_for_eof(reader)

    return serve


def scripted(serve: Callable[..., Awaitable[None]]) -> Script:
    script = Script(serve=lambda r, w, n: serve(r, w, n, script))
    return script


# --------------------------------------------------------------------------- keep-alive


def test_a_connection_is_kept_alive_and_the_request_is_well_formed(run: Any) -> None:
    async def main() -> None:
        script = scripted(answering(OK, OK, OK))
        async with pool_on(script, "/hook?x=1") as pool:
            answers = [await post(pool, b'{"n":1}') for _ in range(3)]
        assert [(a.status, a.body) for a in answers] == [(200, b"ok")] * 3
        assert script.connections == 1
        head = script.heads[0].decode()
        assert head.startswith("POST /hook?x=1 HTTP/1.1\r\n")
        assert "content-length: 7\r\n" in head

    run(main())


def test_the_host_header_names_the_origin(run: Any) -> None:
    async def main() -> None:
        script = scripted(answering(OK))
        port = await script.start()
        pool = pool_for(port)
        try:
            await post(pool)
        finally:
            pool.close()
            await script.stop()
        assert f"\r\nhost: 127.0.0.1:{port}\r\n" in script.heads[0].decode()

    run(main())


def test_a_connection_the_server_closed_while_idle_is_not_reused(run: Any) -> None:
    async def main() -> None:
        async def one_then_close(reader: Any, writer: Any, n: int, script: Script) -> None:
            await script.read_request(reader)
            writer.write(OK)  # keep-alive by default, yet the server closes it
            await writer.drain()

        script = scripted(one_then_close)
        async with pool_on(script) as pool:
            assert (await post(pool)).status == 200
            await wait_until(lambda: all(c.closed for c in pool._idle))
            assert (await post(pool)).status == 200
        assert script.connections == 2

    run(main())


def test_connection_close_is_honoured(run: Any) -> None:
    async def main() -> None:
        closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        script = scripted(answering(closing, OK))  # would answer twice on one connection
        async with pool_on(script) as pool:
            await post(pool)
            await post(pool)
        assert script.connections == 2

    run(main())


# --------------------------------------------------------------------------- answer shapes


def test_a_chunked_answer_is_read_and_the_connection_kept(run: Any) -> None:
    async def main() -> None:
        chunked = (
            b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"
        )
        script = scripted(answering(chunked, OK))
        async with pool_on(script) as pool:
            first = await post(pool)
            second = await post(pool)
        assert (first.status, first.body) == (500, b"wikipedia")
        assert (second.status, script.connections) == (200, 1)

    run(main())


def test_an_answer_that_ends_with_the_connection_is_read(run: Any) -> None:
    async def main() -> None:
        async def close_delimited(reader: Any, writer: Any, n: int, script: Script) -> None:
            await script.read_request(reader)
            writer.write(b"HTTP/1.1 503 Busy\r\nRetry-After: 9\r\n\r\nbusy, try later")
            await writer.drain()

        script = scripted(close_delimited)
        async with pool_on(script) as pool:
            answer = await post(pool)
        assert (answer.status, answer.body) == (503, b"busy, try later")
        assert answer.headers["retry-after"] == "9"

    run(main())


def test_informational_answers_are_skipped(run: Any) -> None:
    async def main() -> None:
        answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + OK
        script = scripted(answering(answer, OK))
        async with pool_on(script) as pool:
            first = await post(pool)
            second = await post(pool)
        assert (first.status, first.body, "link" in first.headers) == (200, b"ok", False)
        assert (second.status, script.connections) == (200, 1)

    run(main())


def test_an_answer_longer_than_the_snippet_is_cut_and_its_connection_closed(run: Any) -> None:
    async def main() -> None:
        long = b"HTTP/1.1 400 Bad\r\nContent-Length: 10000\r\n\r\n" + b"x" * 10000

        async def long_then_short(reader: Any, writer: Any, n: int, script: Script) -> None:
            await script.read_request(reader)
            writer.write(long if n == 1 else OK)
            await writer.drain()
            await script.wait_for_eof(reader)

        script = scripted(long_then_short)
        async with pool_on(script) as pool:
            first = await post(pool)
            second = await post(pool)
        assert (first.status, first.body) == (400, b"x" * 64)
        assert second.status == 200
        assert script.connections == 2  # the rest of the long answer was never read

    run(main())


def whole_pool(port: int, max_body: int = 1000) -> OriginPool:
    """A pool that reads whole answers (the vendor client's), up to `max_body`."""
    return OriginPool(URL(f"http://127.0.0.1:{port}/"), max_body=max_body)


async def get(pool: OriginPool, timeout: float = 5.0) -> Answer:
    head = f"GET /V2/events?x=1 HTTP/1.1\r\n{pool.host_line}content-length: 0\r\n\r\n"
    return await pool.send(head.encode(), b"", within_s=timeout)


@pytest.mark.parametrize(
    "big",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",  # said before a byte is sent
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"100\r\n"
        + b"x" * 256
        + b"\r\n" * 1,  # noticed as it streams
    ],
    ids=["content-length", "chunked"],
)
def test_a_whole_answer_over_the_cap_fails_and_its_connection_closes(run: Any, big: bytes) -> None:
    async def main() -> None:
        async def big_then_ok(reader: Any, writer: Any, n: int, script: Script) -> None:
            await script.read_request(reader)
            if n == 1:
                writer.write(big)
                for _ in range(8):  # 2 KiB more, never ended
                    writer.write(
                        b"100\r\n" + b"x" * 256 + b"\r\n" if b"chunked" in big else b"x" * 256
                    )
            else:
                writer.write(OK)
            await writer.drain()
            await script.wait_for_eof(reader)

        script = scripted(big_then_ok)
        pool = whole_pool(await script.start())
        try:
            with pytest.raises(AnswerTooLarge, match="body over 1000 bytes"):
                await get(pool)
            await wait_until(lambda: script.closed == 1)  # not left half-read
            assert (await get(pool)).status == 200
            assert script.connections == 2
        finally:
            pool.close()
            await script.stop()

    run(main())


def test_a_whole_answer_is_read_across_many_segments(run: Any) -> None:
    async def main() -> None:
        body = bytes(range(256)) * 400  # 100 kB, written in pieces

        async def pieces(reader: Any, writer: Any, n: int, script: Script) -> None:
            for _ in range(2):
                await script.read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                for i in range(0, len(body), 7000):
                    writer.write(body[i : i + 7000])
                    await writer.drain()
            await script.wait_for_eof(reader)

        script = scripted(pieces)
        pool = whole_pool(await script.start(), max_body=len(body))
        try:
            answers = [await get(pool), await get(pool)]
        finally:
            pool.close()
            await script.stop()
        assert [a.body for a in answers] == [body, body]
        assert script.connections == 1

    run(main())


@pytest.mark.parametrize("resend", [True, False])
def test_a_reused_connection_closed_unanswered_is_resent_only_when_asked(
    run: Any, resend: bool
) -> None:
    async def main() -> None:
        async def close_the_second(reader: Any, writer: Any, n: int, script: Script) -> None:
            await script.read_request(reader)
            writer.write(OK)
            await writer.drain()
            if n == 1:
                await script.read_request(reader)  # and close it unanswered
            else:
                await script.wait_for_eof(reader)

        script = scripted(close_the_second)
        pool = whole_pool(await script.start())
        try:
            assert (await get(pool)).status == 200
            if resend:
                second = await pool.send(
                    f"GET / HTTP/1.1\r\n{pool.host_line}content-length: 0\r\n\r\n".encode(),
                    b"",
                    5.0,
                    resend_if_stale=True,
                )
                assert second.status == 200
            else:
                with pytest.raises(NothingBack, match="server disconnected"):
                    await get(pool)
        finally:
            pool.close()
            await script.stop()
        assert script.connections == (2 if resend else 1)
        assert len(script.heads) == (3 if resend else 2)

    run(main())


def test_a_whole_answer_cut_short_by_the_server_is_an_error_not_a_body(run: Any) -> None:
    async def main() -> None:
        async def cut_short(reader: Any, writer: Any, n: int, script: Script) -> None:
            await script.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
            await writer.drain()  # and the connection closes

        script = scripted(cut_short)
        pool = whole_pool(await script.start())
        try:
            with pytest.raises(SendError, match="server disconnected"):
                await get(pool)
        finally:
            pool.close()
            await script.stop()

    run(main())


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"220 smtp.example.com ESMTP ready\r\n", "bad answer: "),
        (
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
            "bad answer: headers too large",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "bad answer: "),
    ],
    ids=["not-http", "huge-headers", "upgrade"],
)
def test_a_bad_answer_fails_the_send_and_closes_the_connection(
    run: Any, answer: bytes, error: str
) -> None:
    async def main() -> None:
        script = scripted(answering(answer))
        async with pool_on(script) as pool:
            with pytest.raises(SendError) as caught:
                await post(pool)
            assert str(caught.value).startswith(error)
            assert pool._idle == []
            await wait_until(lambda: script.closed == 1)

    run(main())


# --------------------------------------------------------------------------- failures


def test_a_timeout_closes_the_connection_and_the_next_send_gets_its_own_answer(
    run: Any,
) -> None:
    async def main() -> None:
        late = asyncio.Event()

        async def slow_first(reader: Any, writer: Any, n: int, script: Script) -> None:
            await script.read_request(reader)
            if n == 1:
                await late.wait()
                writer.write(b"HTTP/1.1 500 Late\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                await script.wait_for_eof(reader)
                return
            writer.write(OK)
            await writer.drain()
            await script.wait_for_eof(reader)

        script = scripted(slow_first)
        async with pool_on(script) as pool:
            with pytest.raises(TimeoutError):
                await post(pool, timeout=0.2)
            late.set()
            answer = await post(pool)
            await wait_until(lambda: script.closed >= 1)
        assert (answer.status, answer.body) == (200, b"ok")
        assert script.connections == 2

    run(main())


def test_a_cancelled_send_closes_its_connection(run: Any) -> None:
    async def main() -> None:
        got_first = asyncio.Event()

        async def serve(reader: Any, writer: Any, n: int, script: Script) -> None:
            await script.read_request(reader)
            if n == 1:
                got_first.set()  # and never answer: the sender gives up first
            else:
                writer.write(OK)
                await writer.drain()
            await script.wait_for_eof(reader)

        script = scripted(serve)
        async with pool_on(script) as pool:
            task = asyncio.ensure_future(post(pool))
            await got_first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Closed, not left open with an answer that may still come.
            await wait_until(lambda: script.closed == 1)
            answer = await post(pool)
        assert answer.status == 200
        assert script.connections == 2

    run(main())


def test_a_refused_connection_names_the_reason_not_the_address(run: Any) -> None:
    async def main() -> None:
        script = scripted(answering(OK))
        port = await script.start()
        await script.stop()
        assert script.server is not None
        await script.server.wait_closed()
        pool = pool_for(port)
        with pytest.raises(SendError) as caught:
            await post(pool)
        assert str(caught.value) == "connection failed: Connection refused"

    run(main())


# --------------------------------------------------------------------------- TLS


def test_https_with_a_trusted_certificate_and_refusal_of_an_untrusted_one(run: Any) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main() -> None:
        script = scripted(answering(OK, OK))
        port = await script.start(server_ctx)
        trusted = OriginPool(
            URL(f"https://127.0.0.1:{port}/h"), max_body=64, cut=True, ssl_context=client_ctx
        )
        untrusted = OriginPool(URL(f"https://127.0.0.1:{port}/h"), max_body=64, cut=True)
        try:
            assert [(await post(trusted)).status, (await post(trusted)).status] == [200, 200]
            with pytest.raises(SendError) as caught:
                await post(untrusted)
        finally:
            trusted.close()
            untrusted.close()
            await script.stop()
        assert str(caught.value) == "TLS error: SSLCertVerificationError"
        assert script.connections == 1  # one kept alive; the refused handshake never got in

    run(main())
