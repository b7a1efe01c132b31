"""The vendor client's GETs on the wire (`bridge.upstream.transport` over `bridge.http1`).

A real aiohttp server stands in for the vendor and answers as a test tells it: the
headers every GET carries, one kept-alive connection for many pages, the content
codings we ask for (gzip, deflate both ways), and what a hostile or broken vendor
sends: a body that inflates past the cap, a truncated or garbled compressed body,
a coding we never asked for, a body cut short, a token that would split a header.
Each ends as `UpstreamUnavailable` (or a config error), never as a wrong page.
"""

from __future__ import annotations

import gzip
import inspect
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from bridge.settings import ConfigError, UpstreamSettings, settings_from_dict
from bridge.upstream import UpstreamAuthError, UpstreamClient, UpstreamUnavailable
from bridge.upstream.transport import MAX_RESPONSE_BYTES

ITEM = {"ticket": "t-1", "timestamp": 1_764_000_000, "type": 3, "device_cid": "c-1"}
PAGE = json.dumps(
    {"uq": "u-1", "result": True, "code": "S00000", "message": "OK", "data": [ITEM], "count": 1}
).encode()


@dataclass
class Vendor:
    """What the stand-in vendor answers, and what it saw."""

    answer: Callable[[web.Request], Any] = lambda _: web.Response(body=PAGE)
    headers: list[dict[str, str]] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)  # (host, port) of each request's connection
    forms: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # path, type, form
    base_url: str = ""


@pytest.fixture
async def vendor(aiohttp_server: Any) -> Vendor:
    v = Vendor()

    async def events(request: web.Request) -> web.StreamResponse:
        v.headers.append(dict(request.headers))
        v.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        answer = v.answer(request)
        return await answer if inspect.isawaitable(answer) else answer

    async def form_post(request: web.Request) -> web.Response:
        v.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        v.forms.append((request.path, request.content_type, dict(await request.post())))
        data = {"videos": []} if request.path.endswith("GetVideoDetail") else None
        body = {"uq": "u-2", "result": True, "code": "S00000", "message": "OK", "data": data}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/V2/events", events)
    app.router.add_post("/V2/event/GetVideoDetail", form_post)
    app.router.add_post("/V2/event/discard", form_post)
    server = await aiohttp_server(app, auto_decompress=False)
    v.base_url = str(server.make_url("/"))
    return v


@pytest.fixture
async def make_client(vendor: Vendor) -> AsyncIterator[Callable[..., UpstreamClient]]:
    made: list[UpstreamClient] = []
    async with aiohttp.ClientSession() as session:

        def make(**overrides: Any) -> UpstreamClient:
            values = {
                "base_url": vendor.base_url,
                "api_key": "key-" + "k" * 12,
                "auth": {"token": "tok-" + "t" * 12},
                "max_retries": 0,
                "max_requests_per_s": 1000,
                **overrides,
            }
            settings = UpstreamSettings.model_validate(values)
            client = UpstreamClient(settings, session, retry_base_delay_s=0.001)
            made.append(client)
            return client

        yield make
        for client in made:
            client.close()


async def items(client: UpstreamClient) -> list[Any]:
    return list((await client.list_events(since=0, until=1)).items)


def encoded(coding: str, body: bytes) -> Callable[[web.Request], web.Response]:
    return lambda _: web.Response(body=body, headers={"Content-Encoding": coding})


async def test_every_get_carries_our_headers_over_one_kept_alive_connection(
    vendor: Vendor, make_client: Callable[..., UpstreamClient]
) -> None:
    client = make_client()
    for _ in range(3):
        assert await items(client) == [ITEM]
    assert len(vendor.peers) == 3
    assert len(set(vendor.peers)) == 1  # one connection, kept alive
    sent = vendor.headers[0]
    assert sent["X-Api-Key"] == "key-" + "k" * 12
    assert sent["Authorization"] == "Bearer tok-" + "t" * 12
    assert sent["Accept-Encoding"] == "gzip, deflate"
    assert sent["User-Agent"].startswith("fleet-bridge/")


async def test_a_read_by_post_shares_the_connection_and_a_work_creating_post_does_not(
    vendor: Vendor, make_client: Callable[..., UpstreamClient]
) -> None:
    """GetVideoDetail (a read, retried like a GET) goes over the client's own kept-alive
    connection as multipart; discard (never repeated unless certainly unsent) over
    aiohttp's, whose errors tell a connection never made from a request sent."""
    client = make_client()
    ticket = "4b2afd89-8123-4842-b430-c95fc143b14a"
    await items(client)
    assert await client.video_detail(ticket) == {"videos": []}
    await client.discard(ticket)
    assert [(path, kind, form) for path, kind, form in vendor.forms] == [
        ("/V2/event/GetVideoDetail", "multipart/form-data", {"ticket": ticket}),
        ("/V2/event/discard", "multipart/form-data", {"ticket": ticket}),
    ]
    get_peer, detail_peer, discard_peer = vendor.peers
    assert detail_peer == get_peer
    assert discard_peer != get_peer


async def test_url_credentials_go_as_basic_auth_beside_a_custom_token_header(
    vendor: Vendor, make_client: Callable[..., UpstreamClient]
) -> None:
    base = vendor.base_url.replace("http://", "http://fleet:s3cret@")
    client = make_client(base_url=base, auth_header="X-Token", auth_scheme="")
    assert await items(client) == [ITEM]
    assert vendor.headers[0]["Authorization"] == "Basic ZmxlZXQ6czNjcmV0"  # fleet:s3cret
    assert vendor.headers[0]["X-Token"] == "tok-" + "t" * 12


@pytest.mark.parametrize(
    "answer",
    [
        encoded("gzip", gzip.compress(PAGE)),
        encoded("deflate", zlib.compress(PAGE)),  # zlib-wrapped, as the RFC says
        encoded("deflate", zlib.compress(PAGE, wbits=-15)),  # raw, as some servers send
        encoded("identity", PAGE),
    ],
    ids=["gzip", "deflate-zlib", "deflate-raw", "identity"],
)
async def test_the_codings_we_ask_for_are_decoded(
    vendor: Vendor, make_client: Callable[..., UpstreamClient], answer: Any
) -> None:
    vendor.answer = answer
    assert await items(make_client()) == [ITEM]


@pytest.mark.parametrize(
    ("answer", "error", "outcome"),
    [
        # 17 MiB of zeros in ~17 kB: inflated, it passes the cap.
        (
            encoded("gzip", gzip.compress(b"0" * (MAX_RESPONSE_BYTES + 1))),
            "over",
            "too_large",
        ),
        (encoded("gzip", gzip.compress(PAGE)[:-12]), "gzip body cut short", "error"),
        (encoded("gzip", b"\x1f\x8b not gzip at all"), "malformed gzip body", "error"),
        (encoded("br", PAGE), "unsupported content-encoding", "error"),
    ],
    ids=["inflates-past-the-cap", "truncated", "garbled", "not-asked-for"],
)
async def test_a_bad_compressed_answer_is_an_error_not_a_page(
    vendor: Vendor,
    make_client: Callable[..., UpstreamClient],
    answer: Any,
    error: str,
    outcome: str,
) -> None:
    seen: list[tuple[str, str]] = []
    vendor.answer = answer
    client = make_client()
    client._transport._on_request = lambda e, s: seen.append((e, s))
    with pytest.raises(UpstreamUnavailable, match=error):
        await items(client)
    assert seen == [("/V2/events", outcome)]


async def test_a_declared_length_over_the_cap_fails_before_the_body_is_read(
    vendor: Vendor, make_client: Callable[..., UpstreamClient]
) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(MAX_RESPONSE_BYTES + 1)})
        await resp.prepare(request)
        await resp.write(b"{")  # and nothing more: only the declared length can tell
        return resp

    vendor.answer = huge
    with pytest.raises(UpstreamUnavailable, match="over"):
        await items(make_client(timeout_s=30))


async def test_a_page_cut_short_is_retried_not_parsed(
    vendor: Vendor, make_client: Callable[..., UpstreamClient]
) -> None:
    calls = 0

    async def cut_then_whole(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls > 1:
            return web.Response(body=PAGE)
        resp = web.StreamResponse(headers={"Content-Length": str(len(PAGE))})
        await resp.prepare(request)
        await resp.write(PAGE[:20])
        assert request.transport is not None
        request.transport.close()  # the rest never comes
        return resp

    vendor.answer = cut_then_whole
    client = make_client(max_retries=2)
    assert await items(client) == [ITEM]
    assert calls == 2


def test_header_values_that_would_split_a_request_are_config_errors() -> None:
    base = {"base_url": "https://vendor.example", "auth": {"token": "tok-" + "t" * 12}}
    for upstream, path in [
        ({**base, "api_key": "key\r\nX-Evil: 1"}, "upstream.api_key"),
        ({**base, "api_key": "k", "auth": {"token": "tok\nen-" + "t" * 12}}, "upstream.auth.token"),
        ({**base, "api_key": "k", "api_key_header": "X Key"}, "upstream.api_key_header"),
        ({**base, "api_key": "k", "auth_scheme": "Bearer\r\n"}, "upstream.auth_scheme"),
    ]:
        config = {"upstream": upstream, "targets": [{"name": "out", "type": "console"}]}
        with pytest.raises(ConfigError) as info:
            settings_from_dict(config, {})
        assert any(line.startswith(path) for line in str(info.value).splitlines()), info.value


async def test_a_vendor_token_that_would_split_a_header_is_refused(
    aiohttp_server: Any, make_client: Callable[..., UpstreamClient]
) -> None:
    async def login(request: web.Request) -> web.Response:
        body = {"result": True, "code": "S00000", "data": {"token": "abc\r\nX-Evil: 1"}}
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/V2/auth", login)
    server = await aiohttp_server(app)
    client = make_client(
        base_url=str(server.make_url("/")), auth={"email": "a@b.example", "password": "secret1"}
    )
    with pytest.raises(UpstreamAuthError, match="line break"):
        await client.login()


async def test_https_vendor_is_verified_through_ssl_cert_file(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The vendor is HTTPS in production: the client's own connections verify its
    certificate against the system store, which `SSL_CERT_FILE` extends (a private CA);
    without it the same server is refused, by name of the TLS error only."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)

    async def events(request: web.Request) -> web.Response:
        return web.Response(body=PAGE)

    app = web.Application()
    app.router.add_get("/V2/events", events)
    server = await aiohttp_server(app, ssl=server_ctx)
    base_url = str(server.make_url("/"))
    assert base_url.startswith("https://")
    settings = UpstreamSettings.model_validate(
        {"base_url": base_url, "api_key": "k" * 16, "auth": {"token": "t" * 16}, "max_retries": 0}
    )
    async with aiohttp.ClientSession() as session:
        untrusted = UpstreamClient(settings, session)
        with pytest.raises(UpstreamUnavailable, match=r"^TLS error: SSLCertVerificationError$"):
            await items(untrusted)
        untrusted.close()
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        trusted = UpstreamClient(settings, session)  # its context is made at first use
        assert await items(trusted) == [ITEM]
        trusted.close()
