"""What a hostile or broken client sends never makes a traceback: every error is JSON.

Raw requests go over a real socket (bytes a well-behaved client library refuses to
send: non-UTF-8 header values, a body that never finishes).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from bridge_rig import ADMIN_TOKEN, PUSH_PATH, PUSH_TOKEN, Rig, make_rig
from conftest import wait_for

from bridge.httpguard import guard_middleware
from bridge.listener import CappedTCPSite, closing_request, probe_request

RigFactory = Callable[..., Awaitable[Rig]]
PUSH = {"ingest": {"vendor_webhook": {"enabled": True, "token": PUSH_TOKEN}}}


@pytest.fixture
def rig_factory(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> RigFactory:
    async def factory(**kw: Any) -> Rig:
        return await make_rig(aiohttp_server, aiohttp_client, tmp_path, **kw)

    return factory


async def raw_request(rig: Rig, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """Send `head` (request line and headers, without the blank line) and `body`."""
    server = rig.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head + b"\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    top, _, payload = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, headers, json.loads(payload)


@pytest.mark.parametrize(
    "auth",
    [b"Bearer \xff\xfe\xfa", "Bearer tökén-ünïcode".encode(), b"\xc3\x28 \xa0\xa1"],
)
async def test_non_ascii_bytes_in_authorization_are_a_json_401(
    rig_factory: RigFactory, auth: bytes
) -> None:
    rig = await rig_factory()
    status, headers, body = await raw_request(
        rig, b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth
    )
    assert status == 401
    assert headers["content-type"].startswith("application/json")
    assert body["error"]["code"] == "unauthorized"


async def test_non_ascii_bytes_in_the_push_token_are_a_json_401(rig_factory: RigFactory) -> None:
    rig = await rig_factory(config=PUSH)
    for token in (b"\xff\xfe" + PUSH_TOKEN.encode(), "püsh-tökén-0123456".encode()):
        status, _, body = await raw_request(
            rig,
            f"POST {PUSH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n".encode()
            + b"X-Bridge-Token: "
            + token,
            b"{}",
        )
        assert status == 401
        assert body["error"]["code"] == "unauthorized"
    status, _, body = await raw_request(
        rig,
        f"POST {PUSH_PATH}?token=%FF%FE HTTP/1.1\r\nHost: x\r\nContent-Length: 2".encode(),
        b"{}",
    )
    assert status == 401


async def test_deeply_nested_json_is_a_json_400(rig_factory: RigFactory) -> None:
    rig = await rig_factory(config=PUSH)
    deep = "[" * 100_000 + "]" * 100_000
    json_type = {"Content-Type": "application/json"}
    resp = await rig.client.post("/api/v1/replay", data=deep, headers={**rig.auth, **json_type})
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "body"
    resp = await rig.client.post(
        PUSH_PATH, data=deep, headers={"X-Bridge-Token": PUSH_TOKEN, **json_type}
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "9" * 5000}, "cursor"),
        ({"cursor": "\u0661\u0662"}, "cursor"),  # Arabic-Indic digits
        ({"limit": "\u0661\u0660"}, "limit"),
        ({"limit": "\uff11\uff10"}, "limit"),  # fullwidth digits
        ({"limit": "+10"}, "limit"),
        ({"limit": "1_0"}, "limit"),
        ({"nope": "1"}, "nope"),
    ],
)
async def test_odd_query_values_are_a_json_400_naming_the_parameter(
    rig_factory: RigFactory, params: dict[str, str], field: str
) -> None:
    rig = await rig_factory()
    resp = await rig.client.get("/api/v1/deliveries", params=params, headers=rig.auth)
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == field


async def test_a_delivery_id_of_5000_digits_is_a_json_404(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    resp = await rig.client.post(f"/api/v1/deliveries/{'7' * 5000}/retry", headers=rig.auth)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_a_text_plain_body_is_not_parsed_as_json(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    body = json.dumps({"target": "out", "since": 0})
    resp = await rig.client.post(
        "/api/v1/replay", data=body, headers={**rig.auth, "Content-Type": "text/plain"}
    )
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"
    resp = await rig.client.post(
        "/api/v1/replay", data=body, headers={**rig.auth, "Content-Type": "application/json"}
    )
    assert resp.status == 202


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/v1/status", "GET"),
        ("PUT", "/api/v1/poll", "POST"),
        ("POST", "/healthz", "GET"),
    ],
)
async def test_405_is_json_and_says_allow(
    rig_factory: RigFactory, method: str, path: str, allow: str
) -> None:
    rig = await rig_factory()
    resp = await rig.client.request(method, path, headers=rig.auth)
    assert resp.status == 405
    assert allow in {m.strip() for m in resp.headers["Allow"].split(",")}
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_an_unknown_path_outside_the_api_is_a_json_404(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    resp = await rig.client.get("/no/such/page")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_a_body_that_never_finishes_is_cut_off_with_a_json_408(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory(config={**PUSH, "server": {"read_timeout_s": 0.3}})
    head = (
        f"POST /api/v1/replay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000"
    ).encode()
    status, _, body = await raw_request(rig, head, b'{"target": ')  # and then nothing
    assert status == 408
    assert body["error"]["code"] == "request_timeout"
    head = (
        f"POST {PUSH_PATH} HTTP/1.1\r\nHost: x\r\nX-Bridge-Token: {PUSH_TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000"
    ).encode()
    status, _, body = await raw_request(rig, head, b'{"hookName": ')
    assert status == 408
    assert body["error"]["code"] == "request_timeout"


async def test_connections_past_the_cap_get_a_json_503_and_are_closed() -> None:
    # The site `fleet-bridge run` listens through: idle connections count too.
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[guard_middleware()])
    app.router.add_get("/ok", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = CappedTCPSite(runner, "127.0.0.1", 0, max_connections=2, header_timeout_s=30)
    await site.start()
    server = runner.server
    assert server is not None
    try:
        held = [await asyncio.open_connection("127.0.0.1", site.port) for _ in range(2)]
        await wait_for(lambda: len(server.connections) == 2, message="2 connections open")
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        answer = await reader.read()  # the bridge hangs up after answering
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"Retry-After: 1" in head
        assert json.loads(body)["error"]["code"] == "unavailable"
        assert site.refused == 1

        for _, w in held:
            w.close()
        await wait_for(lambda: not server.connections, message="the held connections closed")
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
        writer.close()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("line", "probe"),
    [
        (b"GET /healthz HTTP/1.1", True),
        (b"HEAD /readyz?x=1 HTTP/1.0", True),
        (b"POST /healthz HTTP/1.1", False),
        (b"GET /healthz/x HTTP/1.1", False),
        (b"GET /api/v1/status HTTP/1.1", False),
        (b"GET  /healthz HTTP/1.1", False),
        (b"GET /healthz", False),
        (b"GET /healthz HTTP/2.0", False),
    ],
)
def test_probe_request_lines(line: bytes, probe: bool) -> None:
    assert probe_request(line, frozenset({"/healthz", "/readyz"})) is probe


def test_a_probe_past_the_cap_asks_to_close_after_its_answer() -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nconnection : Keep-Alive\r\nAccept: */*"
    assert closing_request(head) == (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )


async def exchange(port: int, request: bytes) -> bytes:
    """Send `request` on a new connection; everything the server sends until it hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    return answer


async def test_past_the_cap_a_probe_is_still_answered_and_nothing_else() -> None:
    # A flood holding every connection must not fail the kubelet's probes (it would
    # restart a healthy pod), nor get anything else past the cap.
    release = asyncio.Event()
    held_in_handler = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal held_in_handler
        held_in_handler += 1
        await release.wait()
        return web.json_response({"status": "done"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[guard_middleware()])
    app.router.add_get("/slow", slow)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = CappedTCPSite(
        runner,
        "127.0.0.1",
        0,
        max_connections=2,
        header_timeout_s=30,
        probe_paths=frozenset({"/healthz"}),
        probe_connections=2,
        probe_headers_s=0.3,
    )
    await site.start()
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append((reader, writer))
        await wait_for(lambda: held_in_handler == 2, message="both connections held by requests")

        ordinary = b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        refused = await exchange(site.port, ordinary)
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert json.loads(refused.partition(b"\r\n\r\n")[2])["error"]["code"] == "unavailable"
        # Refused, a connection leaves the reserve at once, though it may linger open.
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(ordinary)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 503 ")
        assert site.probes == 0
        writer.close()

        # The probe is answered; its connection closes after that one answer, even
        # when the client asked to keep it and sent a second request behind it.
        answer = await exchange(
            site.port,
            b"GET /healthz?verbose HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
            b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" in head
        assert json.loads(body) == {"status": "ok"}
        assert answer.count(b"HTTP/1.1 ") == 1
        assert (await exchange(site.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 200 "
        )
        assert held_in_handler == 2  # the second request never reached the app
        # A POST to a probe path is no probe either.
        post = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        assert (await exchange(site.port, post)).startswith(b"HTTP/1.1 503 ")
        assert (await exchange(site.port, ordinary)).startswith(b"HTTP/1.1 503 ")
        assert site.refused == 4

        # The reserve is bounded: two idle connections fill it, a probe then gets the
        # 503, and the idle ones are turned away after `probe_headers_s`.
        idle = [await asyncio.open_connection("127.0.0.1", site.port) for _ in range(2)]
        await wait_for(lambda: site.probes == 2, message="the reserve full")
        probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await exchange(site.port, probe)).startswith(b"HTTP/1.1 503 ")
        for reader, writer in idle:
            assert (await reader.read()).startswith(b"HTTP/1.1 503 ")
            writer.close()
        await wait_for(lambda: site.probes == 0, message="the reserve empty")
        assert (await exchange(site.port, probe)).startswith(b"HTTP/1.1 200 ")

        # None of it took an ordinary slot: the held requests finish, and then an
        # ordinary request is served again.
        release.set()
        for reader, _ in held:
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        for _, writer in held:
            writer.close()
        server = runner.server
        assert server is not None
        await wait_for(lambda: not server.connections, message="the held connections closed")
        assert (await exchange(site.port, ordinary)).startswith(b"HTTP/1.1 200 ")
    finally:
        release.set()
        for _, writer in held:
            writer.close()
        await runner.cleanup()


async def test_a_connection_that_never_finishes_its_headers_is_cut_off_with_a_json_408() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[guard_middleware()])
    app.router.add_get("/ok", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = CappedTCPSite(runner, "127.0.0.1", 0, max_connections=4, header_timeout_s=0.3)
    await site.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n")  # and the headers never end
        answer = await reader.read()
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(body)["error"]["code"] == "request_timeout"
        # A whole request in time, then the connection kept alive past the deadline.
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        await reader.readexactly(len(b'{"status": "ok"}'))
        with pytest.raises(TimeoutError):  # not cut off past the header deadline
            await asyncio.wait_for(reader.read(1), timeout=0.6)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
        writer.close()
    finally:
        await runner.cleanup()


def test_fleet_bridge_run_caps_connections_and_still_answers_its_probes(tmp_path: Path) -> None:
    # The real entry point under a flood: every connection held by a vendor push whose
    # body is still coming. Anything else is refused; the kubelet's probes and the
    # Prometheus scrape are still answered (else a healthy pod gets restarted).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cap = 3
    cfg = {
        "upstream": {
            "base_url": "http://127.0.0.1:9",
            "api_key": "k-1234",
            "auth": {"token": "t-1234"},
        },
        "store": {"url": f"sqlite:///{tmp_path / 'bridge.db'}"},
        "ingest": {"vendor_webhook": {"enabled": True, "token": PUSH_TOKEN}},
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "max_connections": cap,
            "admin_token": ADMIN_TOKEN,
            "read_timeout_s": 120,  # the held pushes outlast the test
        },
        "logging": {"format": "json", "level": "error"},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    held: list[socket.socket] = []
    try:

        def answer(request: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(request)
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        def get(path: str, *extra: str) -> bytes:
            lines = [f"GET {path} HTTP/1.1", "Host: x", *extra, "", ""]
            return answer("\r\n".join(lines).encode())

        deadline = time.monotonic() + 30
        while True:  # until the service listens
            try:
                head = get("/healthz", "Connection: close")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "fleet-bridge run did not listen"
                time.sleep(0.05)  # polling a subprocess's start-up, not synchronizing tasks
        assert head.startswith(b"HTTP/1.1 200 ")

        # `Expect: 100-continue`: the bridge says "100 Continue" once the push is in a
        # handler, which then waits for the rest of the body. (Until the start-up
        # probe's connection is released, a new one may still be refused: try again.)
        push = (
            f"POST {PUSH_PATH} HTTP/1.1\r\nHost: x\r\nX-Bridge-Token: {PUSH_TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n"
            "Expect: 100-continue\r\n\r\n"
        ).encode()
        while len(held) < cap:
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(push + b'{"hookName": ')
            if conn.recv(65536).startswith(b"HTTP/1.1 100 "):
                held.append(conn)
                continue
            conn.close()
            assert time.monotonic() < deadline, "the pushes never held the connections"

        status = ("/api/v1/status", f"Authorization: Bearer {ADMIN_TOKEN}")
        refused = get(*status)
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert json.loads(refused.partition(b"\r\n\r\n")[2])["error"]["code"] == "unavailable"
        # As the kubelet and Prometheus ask (the kubelet sends no `Connection: close`
        # header of its own here: the bridge closes after the answer anyway).
        for path, body in (
            ("/healthz", b'{"status": "ok"}'),
            ("/readyz", b'{"status": "ready"}'),
            ("/metrics", b"bridge_poll_leader "),
        ):
            got = get(path, "User-Agent: kube-probe/1.31")
            assert got.startswith(b"HTTP/1.1 200 "), got[:200]
            assert body in got
        # The probes took no ordinary slot, and gave nothing else a way past the cap.
        assert get(*status).startswith(b"HTTP/1.1 503 ")
        assert answer(push + b"{}").startswith(b"HTTP/1.1 503 ")
        for conn in held:  # still held, unanswered
            conn.setblocking(False)
            with pytest.raises(BlockingIOError):
                conn.recv(1)
    finally:
        for conn in held:
            conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
