"""The webhook target against real aiohttp receivers on loopback.

Every receiver that knows a secret verifies the delivery with the reference
`standardwebhooks` library and answers 401 when verification fails, exactly as a
third-party receiver would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from multidict import CIMultiDictProxy
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from yarl import URL

from bridge import __version__
from bridge.clock import FakeClock
from bridge.notifications import build_notification
from bridge.settings import WebhookTarget
from bridge.store.base import Delivery
from bridge.targets.base import SendResult
from bridge.targets.webhook import WebhookSender, secret_key, sign

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass
class Hit:
    headers: CIMultiDictProxy[str]
    body: bytes
    path_qs: str
    verified: bool | None  # None: this receiver knows no secret


@dataclass
class Receiver:
    """A webhook receiver: verifies (when it has a secret), records, then answers."""

    secret: str | None = None
    respond: Responder | None = None
    hits: list[Hit] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        verified = None
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, dict(request.headers))
                verified = True
            except WebhookVerificationError:
                verified = False
        self.hits.append(Hit(request.headers, body, request.path_qs, verified))
        if verified is False:
            return web.Response(status=401, text="bad signature")
        if self.respond is not None:
            return await self.respond(request)
        return web.Response(status=200, text="thanks")

    async def serve(self, aiohttp_server: ServerFactory) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        server = await aiohttp_server(app)
        return str(server.make_url("/hook"))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    # standardwebhooks compares timestamps with the real time (5 min tolerance).
    return FakeClock(start=float(int(time.time())))


def target(url: str, **extra: Any) -> WebhookTarget:
    return WebhookTarget.model_validate({"name": "hook", "type": "webhook", "url": url, **extra})


def notification(data: dict[str, Any] | None = None) -> tuple[Delivery, dict[str, Any], str]:
    n = build_notification(
        "event.created",
        data or {"ticket": "4b2afd89", "driver": {"name": "Zoë Ñúñez"}, "place": "台北 🚚"},
        base_url="https://fleet.example.com",
        now=time.time(),
    )
    delivery = Delivery(
        id=1,
        notification_id=n.id,
        type=n.type,
        target="hook",
        body=n.body,
        attempts=0,
        created_at=n.created_at,
    )
    return delivery, n.envelope(), n.body


# --------------------------------------------------------------------------- signing


async def test_a_signed_delivery_verifies_and_carries_the_spec_headers(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    secret = new_secret()
    receiver = Receiver(secret=secret)
    sender = WebhookSender(target(await receiver.serve(aiohttp_server), secret=secret), clock=clock)
    delivery, envelope, body = notification()

    result = await sender.send(delivery, envelope, body)

    assert result == SendResult(ok=True, status=200)
    [hit] = receiver.hits
    assert hit.verified is True
    assert hit.body == body.encode("utf-8")  # exactly the bytes given, non-ASCII kept
    assert "Zoë" in hit.body.decode("utf-8")
    assert json.loads(hit.body) == envelope
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["user-agent"] == f"fleet-bridge/{__version__}"
    assert hit.headers["webhook-id"] == envelope["id"]
    assert hit.headers["webhook-timestamp"] == str(int(clock.now()))
    assert hit.headers["webhook-signature"] == sign(
        [secret], envelope["id"], int(clock.now()), body
    )


async def test_rotation_both_the_old_and_the_new_secret_verify(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    old, new = new_secret(), new_secret()
    knows_old, knows_new, knows_other = Receiver(old), Receiver(new), Receiver(new_secret())
    delivery, envelope, body = notification()

    results = []
    for receiver in (knows_old, knows_new, knows_other):
        cfg = target(await receiver.serve(aiohttp_server), secret=[new, old])
        results.append(await WebhookSender(cfg, clock=clock).send(delivery, envelope, body))

    assert results[0].ok
    assert results[1].ok
    assert [knows_old.hits[0].verified, knows_new.hits[0].verified] == [True, True]
    signatures = knows_old.hits[0].headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(s.startswith("v1,") for s in signatures)
    # A receiver with a secret we do not hold rejects; its 401 is a permanent failure.
    assert knows_other.hits[0].verified is False
    assert (results[2].ok, results[2].status, results[2].retryable) == (False, 401, False)


async def test_id_stays_and_timestamp_and_signature_are_fresh_per_attempt(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    secret = new_secret()
    receiver = Receiver(secret=secret)
    sender = WebhookSender(target(await receiver.serve(aiohttp_server), secret=secret), clock=clock)
    delivery, envelope, body = notification()

    assert (await sender.send(delivery, envelope, body)).ok
    clock.advance(30)
    assert (await sender.send(delivery, envelope, body)).ok

    first, second = receiver.hits
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == envelope["id"]
    stamps = [int(h.headers["webhook-timestamp"]) for h in (first, second)]
    assert stamps[1] - stamps[0] == 30
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    assert first.verified is second.verified is True


async def test_without_a_secret_there_is_no_signature_header(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    receiver = Receiver()
    sender = WebhookSender(target(await receiver.serve(aiohttp_server)), clock=clock)
    delivery, envelope, body = notification()

    assert (await sender.send(delivery, envelope, body)).ok
    [hit] = receiver.hits
    assert "webhook-signature" not in hit.headers
    assert hit.headers["webhook-id"] == envelope["id"]
    assert hit.headers["webhook-timestamp"] == str(int(clock.now()))


def test_sign_matches_the_reference_library() -> None:
    secrets = [new_secret(), new_secret(), new_secret().rstrip("=")]  # unpadded works too
    stamp = 1_764_000_123
    body = '{"id":"ntf_1","place":"東京"}'
    expected = [
        Webhook(s).sign("ntf_1", datetime.fromtimestamp(stamp, tz=UTC), body) for s in secrets
    ]
    assert sign(secrets, "ntf_1", stamp, body) == " ".join(expected)
    assert sign(secrets[:1], "ntf_1", stamp, body) == expected[0]
    assert sign([], "ntf_1", stamp, body) == ""
    assert sign(secrets[:1], "ntf_1", stamp + 1, body) != expected[0]


@pytest.mark.parametrize("bad", ["whsec_", "whsec_!!!notbase64", "whsec_a"])
def test_secret_key_rejects_bad_secrets(bad: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        secret_key(bad)


# --------------------------------------------------------------------------- headers


async def test_custom_headers_are_sent_but_cannot_override_reserved_ones(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    secret = new_secret()
    receiver = Receiver(secret=secret)
    headers = {
        "X-Tenant": "fleet-42",
        "Authorization": "Bearer abc",
        "Webhook-Id": "forged-id",
        "WEBHOOK-TIMESTAMP": "1",
        "webhook-signature": "v1,Zm9yZ2Vk",
        "Content-Type": "text/plain",
        "User-Agent": "curl/8",
        "Content-Length": "5",  # would truncate the body
    }
    cfg = target(await receiver.serve(aiohttp_server), secret=secret, headers=headers)
    delivery, envelope, body = notification()

    assert (await WebhookSender(cfg, clock=clock).send(delivery, envelope, body)).ok
    [hit] = receiver.hits
    assert hit.verified is True
    assert hit.headers["X-Tenant"] == "fleet-42"
    assert hit.headers["Authorization"] == "Bearer abc"
    assert hit.headers.getall("webhook-id") == [envelope["id"]]
    assert hit.headers.getall("webhook-timestamp") == [str(int(clock.now()))]
    assert len(hit.headers.getall("webhook-signature")) == 1
    assert hit.headers.getall("content-type") == ["application/json"]
    assert hit.headers.getall("user-agent") == [f"fleet-bridge/{__version__}"]
    assert hit.body == body.encode("utf-8")


@pytest.mark.parametrize(
    "headers", [{"X-Evil": "a\r\nX-Injected: 1"}, {"Bad Name": "x"}, {"X-Nul": "a\x00b"}]
)
async def test_header_injection_is_refused_at_construction(
    headers: dict[str, str], session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ValueError, match="header"):
        WebhookSender(target("http://127.0.0.1:9/hook", headers=headers))


# --------------------------------------------------------------------------- classification


def _answer(
    status: int, headers: Callable[[float], dict[str, str]] | None, clock: FakeClock
) -> Responder:
    async def respond(request: web.Request) -> web.StreamResponse:
        extra = headers(clock.now()) if headers else None
        return web.Response(status=status, headers=extra, text="no")

    return respond


def _date_in(seconds: float) -> Callable[[float], dict[str, str]]:
    return lambda now: {"Retry-After": formatdate(now + seconds, usegmt=True)}


def _delta(value: str) -> Callable[[float], dict[str, str]]:
    return lambda now: {"Retry-After": value}


CLASSIFICATION = [
    # status, response headers, ok, retryable, retry_after, pause
    (200, None, True, True, None, False),
    (201, None, True, True, None, False),
    (204, None, True, True, None, False),
    (400, None, False, False, None, False),
    (401, None, False, False, None, False),
    (404, None, False, False, None, False),
    (422, None, False, False, None, False),
    (408, None, False, True, None, False),
    (429, None, False, True, None, False),
    (429, _delta("7"), False, True, 7.0, False),
    (429, _date_in(120), False, True, 120.0, False),
    (429, _delta("later"), False, True, None, False),
    (500, None, False, True, None, False),
    (500, _delta("7"), False, True, None, False),  # Retry-After counts on 429/503 only
    (502, None, False, True, None, False),
    (503, None, False, True, None, False),
    (503, _delta("30"), False, True, 30.0, False),
    (503, _date_in(90), False, True, 90.0, False),
    (504, None, False, True, None, False),
    (410, None, False, False, None, True),
]


@pytest.mark.parametrize(
    ("status", "headers", "ok", "retryable", "retry_after", "pause"), CLASSIFICATION
)
async def test_classification(
    aiohttp_server: ServerFactory,
    session: aiohttp.ClientSession,
    clock: FakeClock,
    status: int,
    headers: Callable[[float], dict[str, str]] | None,
    ok: bool,
    retryable: bool,
    retry_after: float | None,
    pause: bool,
) -> None:
    receiver = Receiver(respond=_answer(status, headers, clock))
    url = await receiver.serve(aiohttp_server)
    delivery, envelope, body = notification()

    result = await WebhookSender(target(url), clock=clock).send(delivery, envelope, body)

    assert len(receiver.hits) == 1
    assert result.status == status
    assert (result.ok, result.retryable, result.retry_after, result.pause) == (
        ok,
        retryable,
        retry_after,
        pause,
    )
    assert (result.error is None) == ok
    if not ok:
        assert result.error == f"HTTP {status}: no"


async def test_redirects_are_not_followed(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    other = Receiver()

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/elsewhere")

    receiver = Receiver(respond=redirect)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    app.router.add_route("*", "/elsewhere", other.handle)
    url = str((await aiohttp_server(app)).make_url("/hook"))
    delivery, envelope, body = notification()

    result = await WebhookSender(target(url), clock=clock).send(delivery, envelope, body)

    assert (result.ok, result.status, result.retryable) == (False, 302, True)
    assert result.error is not None
    assert "redirect not followed" in result.error
    assert other.hits == []


# --------------------------------------------------------------------------- transport failures


async def test_connection_refused_is_retryable_and_secret_free(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    url = f"http://127.0.0.1:{unused_port()}/hook?token=supersecret123"
    cfg = target(url, secret=new_secret(), headers={"Authorization": "Bearer topsecret456"})
    delivery, envelope, body = notification()

    result = await WebhookSender(cfg, clock=clock).send(delivery, envelope, body)

    assert result == SendResult(ok=False, error="connection failed: Connection refused")
    assert result.retryable


async def test_a_receiver_that_never_answers_times_out(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await never.wait()
        return web.Response()

    receiver = Receiver(respond=hang)
    cfg = target(await receiver.serve(aiohttp_server), timeout_s=0.2)
    delivery, envelope, body = notification()
    started = time.monotonic()
    try:
        result = await WebhookSender(cfg, clock=clock).send(delivery, envelope, body)
    finally:
        never.set()  # let the server shut down cleanly

    assert time.monotonic() - started < 3
    assert len(receiver.hits) == 1
    assert result == SendResult(ok=False, error="timeout after 0.2s")
    assert result.retryable


async def test_a_dropped_connection_is_retryable(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    receiver = Receiver(respond=drop)
    cfg = target(await receiver.serve(aiohttp_server))
    delivery, envelope, body = notification()

    result = await WebhookSender(cfg, clock=clock).send(delivery, envelope, body)

    assert (result.ok, result.status, result.retryable) == (False, None, True)
    assert result.error == "connection failed: server disconnected"


async def test_error_text_is_short_and_never_echoes_secrets(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        # A debugging receiver that echoes everything it got, like httpbin.
        lines = [request.path_qs, *(f"{k}: {v}" for k, v in request.headers.items())]
        return web.Response(status=500, text=" | ".join(lines) + " " + "x" * 100_000)

    secret = new_secret()
    receiver = Receiver(respond=echo)
    base = await receiver.serve(aiohttp_server)
    cfg = target(
        f"{base}?token=supersecret123",
        secret=secret,
        headers={"Authorization": "Bearer topsecret456"},
    )
    delivery, envelope, body = notification()

    result = await WebhookSender(cfg, clock=clock).send(delivery, envelope, body)

    assert (result.ok, result.status, result.retryable) == (False, 500, True)
    assert result.error is not None
    assert result.error.startswith("HTTP 500: /hook?")
    assert len(result.error) <= 220
    signature = receiver.hits[0].headers["webhook-signature"]
    for leaked in ("supersecret123", "topsecret456", signature.removeprefix("v1,"), secret):
        assert leaked not in result.error


async def test_only_a_snippet_of_an_endless_answer_is_read(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    never = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=503)
        await resp.prepare(request)
        await resp.write(b"z" * 65_536)
        await never.wait()  # the body never ends: reading it all would hit the timeout
        return resp

    receiver = Receiver(respond=endless)
    cfg = target(await receiver.serve(aiohttp_server), timeout_s=5)
    delivery, envelope, body = notification()
    started = time.monotonic()
    try:
        result = await WebhookSender(cfg, clock=clock).send(delivery, envelope, body)
    finally:
        never.set()

    assert time.monotonic() - started < 2.5
    assert (result.ok, result.status, result.retryable) == (False, 503, True)
    assert result.error == "HTTP 503: " + "z" * 200


async def test_a_large_success_body_is_not_a_problem(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, body=b"y" * 5_000_000)

    receiver = Receiver(respond=big)
    cfg = target(await receiver.serve(aiohttp_server))
    delivery, envelope, body = notification()

    assert await WebhookSender(cfg, clock=clock).send(
        delivery, envelope, body
    ) == SendResult.success(200)


async def test_start_and_close_leave_the_shared_session_open(
    session: aiohttp.ClientSession,
) -> None:
    sender = WebhookSender(target("http://127.0.0.1:9/hook"))
    assert sender.name == "hook"
    await sender.start()
    await sender.close()
    assert not session.closed


# --------------------------------------------------------------------------- connections


async def test_credentials_in_the_url_go_as_basic_auth_and_never_into_errors(
    aiohttp_server: ServerFactory, clock: FakeClock
) -> None:
    async def echo_user(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="who is userpass99?")

    receiver = Receiver(respond=echo_user)
    url = URL(await receiver.serve(aiohttp_server)).with_user("bridge").with_password("userpass99")
    sender = WebhookSender(target(str(url)), clock=clock)
    delivery, envelope, body = notification()

    result = await sender.send(delivery, envelope, body)
    await sender.close()

    [hit] = receiver.hits
    assert (
        hit.headers["Authorization"] == "Basic " + base64.b64encode(b"bridge:userpass99").decode()
    )
    assert result.error == "HTTP 500: who is ***?"


async def test_sends_share_one_kept_alive_connection_until_close(
    aiohttp_server: ServerFactory, clock: FakeClock
) -> None:
    peers: set[Any] = set()

    async def note_peer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(status=204)

    receiver = Receiver(respond=note_peer)
    sender = WebhookSender(target(await receiver.serve(aiohttp_server)), clock=clock)
    delivery, envelope, body = notification()

    results = [await sender.send(delivery, envelope, body) for _ in range(3)]
    await sender.close()
    after_close = await sender.send(delivery, envelope, body)
    await sender.close()

    assert [r.ok for r in results] == [True] * 3
    assert len(peers) == 2  # three sends on one connection; after close(), a new one
    assert after_close.ok


def test_a_rendered_header_that_could_split_the_request_is_refused() -> None:
    sender = WebhookSender(target("http://127.0.0.1:9/hook", headers={"X-Team": "ops"}))

    with pytest.raises(ValueError, match="cannot be sent"):
        sender._with_rendered((("ce-subject", "a\r\nX-Evil: 1"),))
    assert (
        sender._with_rendered((("ce-id", "1"), ("x-team", "sre"))) == "ce-id: 1\r\nx-team: sre\r\n"
    )
