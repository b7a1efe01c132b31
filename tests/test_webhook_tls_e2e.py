"""`fleet-bridge run` delivers to an HTTPS webhook: the real process on its own event
loop (uvloop), the webhook target's own connections, TLS verified against the system's
trust store as an operator extends it (`SSL_CERT_FILE`), and refused without it.

The receiver verifies every Standard Webhooks signature; the simulator serves a small
backlog. Every ticket must arrive once and verified, over few connections (kept alive).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import wait_for
from test_crash_recovery import start_bridge, write_config
from webhook_receiver import Receiver

from bridge.simulator import Simulator, SimulatorConfig

ServerFactory = Callable[..., Awaitable[TestServer]]
BACKLOG = 60


@pytest.fixture
async def tls_receiver(tmp_path: Path) -> AsyncIterator[tuple[Receiver, str, Path, set[Any]]]:
    """A receiver on https://localhost with a certificate of a throwaway CA; the CA's file."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    receiver = Receiver()
    peers: set[Any] = set()

    @web.middleware
    async def note_peer(request: web.Request, handler: Any) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return await handler(request)  # type: ignore[no-any-return]

    app = receiver.app()
    app.middlewares.append(note_peer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield receiver, f"https://localhost:{port}/hook", ca_file, peers
    finally:
        await runner.cleanup()


async def simulator(aiohttp_server: ServerFactory, backlog: int) -> str:
    sim = Simulator(SimulatorConfig(seed=3, devices=10, rate=0.0, backlog=backlog))
    return str((await aiohttp_server(sim.app())).make_url(""))


async def stop(proc: Any) -> str:
    if proc.returncode is None:
        proc.terminate()
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    return str(err.decode())


async def test_the_bridge_delivers_over_verified_tls_on_kept_alive_connections(
    aiohttp_server: ServerFactory,
    tls_receiver: tuple[Receiver, str, Path, set[Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver, hook_url, ca_file, peers = tls_receiver
    sim_url = await simulator(aiohttp_server, BACKLOG)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the bridge process inherits it

    proc = await start_bridge(
        write_config(tmp_path / "c.yaml", sim_url, hook_url, tmp_path / "b.db")
    )
    try:
        await wait_for(
            lambda: len(receiver.tickets()) >= BACKLOG or proc.returncode is not None,
            timeout=60,
            message="every ticket delivered over TLS",
        )
    finally:
        log = await stop(proc)

    tickets = receiver.tickets()
    assert len(tickets) == BACKLOG, log
    assert set(tickets.values()) == {1}  # once each
    assert receiver.rejected_signatures == 0
    assert len(peers) <= 8  # the target's connections, kept alive: not one per delivery
    assert '"level": "error"' not in log, log


async def test_an_untrusted_certificate_is_refused_and_nothing_is_delivered(
    aiohttp_server: ServerFactory,
    tls_receiver: tuple[Receiver, str, Path, set[Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver, hook_url, _, _ = tls_receiver
    sim_url = await simulator(aiohttp_server, 5)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    proc = await start_bridge(
        write_config(tmp_path / "c.yaml", sim_url, hook_url, tmp_path / "b.db")
    )
    lines: list[str] = []

    async def read() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            lines.append(raw.decode())

    reader = asyncio.create_task(read())
    try:
        await wait_for(
            lambda: any("TLS error: SSLCertVerificationError" in line for line in lines),
            timeout=60,
            message="the refusal logged",
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        await reader

    assert receiver.requests == 0
