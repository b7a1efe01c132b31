"""What crosses the vendor boundary, both ways.

Out: a clip's `serial_number` and `file_name` and the ticket to discard are checked
against strict patterns (400 naming the field) before any request is built; the
OpenAPI document carries the same patterns. In: vendor text is cleaned once
(`bridge.vendor_text`), upstream answers are read up to a size limit, and the caches
and queues vendor data fills are bounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from bridge_rig import Rig, make_rig
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from bridge.clips import AUTO_QUEUE_MAX, ClipTracker
from bridge.clock import FakeClock, parse_rfc3339, utc_iso
from bridge.event_types import CACHED_NAME_CHARS, _cached_category, category_from_name
from bridge.metrics import Metrics
from bridge.notifications import build_notification
from bridge.settings import UpstreamSettings, settings_from_dict
from bridge.upstream import UpstreamClient, UpstreamUnavailable
from bridge.upstream.transport import MAX_RESPONSE_BYTES
from bridge.vendor_ids import (
    FILE_NAME_PATTERN,
    SERIAL_PATTERN,
    TICKET_PATTERN,
    is_file_name,
    is_serial,
)
from bridge.vendor_text import MAX_DEPTH, MAX_STRING_CHARS, clean_json, clean_text, loads_clean

RigFactory = Callable[..., Awaitable[Rig]]
TICKET = "4b2afd89-8123-4842-b430-c95fc143b14a"


@pytest.fixture
def rig_factory(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> RigFactory:
    async def factory(**kw: Any) -> Rig:
        return await make_rig(aiohttp_server, aiohttp_client, tmp_path, **kw)

    return factory


def vendor_calls(rig: Rig, prefix: str) -> int:
    return sum(1 for r in rig.sim.requests if r.path.startswith(prefix))


# -- out: inputs passed to the vendor -----------------------------------------------------

BAD_SERIALS = ["..", ".", "K245C\n", "K245C\x00", "K245\u202eC", "A-1", "a b", "x" * 65, ""]
BAD_FILE_NAMES = [
    "a\nb",
    "a\x00b",
    "a\u202eb",
    "..",
    "a..b",
    ".hidden",
    "trailing ",
    " leading",
    "a  b",
    "a/b",
    "../x",
    "a:b",
    "é",
]


async def test_clip_serial_and_file_name_are_checked_before_the_vendor_sees_them(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    device = rig.sim.devices[0]
    good = {
        "serial_number": device.serial_number,
        "cam_id": "C_F",
        "target_timestamp": utc_iso(rig.clock.now() - 60),
        "file_name": "Harsh braking 2026-11-24 (front).mp4",
    }
    cases = [("serial_number", {**good, "serial_number": s}) for s in BAD_SERIALS]
    cases += [("file_name", {**good, "file_name": f}) for f in BAD_FILE_NAMES]
    for field, body in cases:
        resp = await rig.post_clip(body)
        assert resp.status == 400, body
        error = (await resp.json())["error"]
        assert error["field"] == field, body
    assert vendor_calls(rig, "/V2/event/videoClip/") == 0
    # The good forms pass: a serial number, a device CID (UUID), a plain file name.
    for serial in (device.serial_number, device.device_cid):
        resp = await rig.post_clip({**good, "serial_number": serial})
        assert resp.status == 202, await resp.text()
    assert vendor_calls(rig, "/V2/event/videoClip/") == 2


async def test_discard_ticket_must_be_the_vendor_uuid_form(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    base = str(rig.client.make_url("/api/v1/events/"))
    for bad in ("..", "%2E%2E", "abc", f"{TICKET}x", TICKET.replace("-", ""), "%E2%80%AE" + TICKET):
        # A raw URL: the client must not resolve `..` before the bridge sees it.
        url = URL(f"{base}{bad}/discard", encoded=True)
        resp = await rig.client.session.post(url, json={"confirm": True}, headers=rig.auth)
        assert resp.status == 400, bad
        error = (await resp.json())["error"]
        assert error["field"] == "ticket"
        assert error["message"].startswith("ticket:")
    assert vendor_calls(rig, "/V2/event/discard") == 0
    item = rig.sim.add_event(video=False)
    resp = await rig.client.post(
        f"/api/v1/events/{item['ticket']}/discard", json={"confirm": True}, headers=rig.auth
    )
    assert resp.status == 200
    assert vendor_calls(rig, "/V2/event/discard") == 1


def test_openapi_carries_the_same_patterns() -> None:
    doc = json.loads(resources.files("bridge").joinpath("openapi.json").read_text())
    clip = doc["components"]["schemas"]["ClipRequest"]["properties"]
    assert clip["serial_number"]["pattern"] == SERIAL_PATTERN
    assert clip["file_name"]["pattern"] == FILE_NAME_PATTERN
    params = doc["paths"]["/api/v1/events/{ticket}/discard"]["post"]["parameters"]
    (ticket,) = [p for p in params if p["name"] == "ticket"]
    assert ticket["schema"]["pattern"] == TICKET_PATTERN
    # ECMA-262 `$` is the end of input (Python's `re.fullmatch` here, never `re.search`).
    for bad in BAD_FILE_NAMES:
        assert not is_file_name(bad), bad
    for bad in BAD_SERIALS:
        assert not is_serial(bad), bad


# -- in: vendor text ----------------------------------------------------------------------


def test_clean_text_rules() -> None:
    assert clean_text("Jane Doe") == "Jane Doe"
    assert clean_text("a\ud800b\udfffc") == "a\ufffdb\ufffdc"
    assert clean_text("a\x00\x01\x1b\x7f\x85\x9fb") == "ab"
    assert clean_text("line\tone\r\nline two") == "line\tone\r\nline two"
    assert clean_text("x\u202ey\u2066z\u2069") == "xyz"
    assert clean_text("\U0001f69a 車") == "\U0001f69a 車"
    long = clean_text("é" * (MAX_STRING_CHARS + 10))
    assert len(long) == MAX_STRING_CHARS
    assert long.endswith("\u2026")


def test_clean_json_cleans_keys_numbers_and_depth() -> None:
    value = json.loads('{"a\\ud800": [NaN, Infinity, 1.5, 2, true, null, "\\u0000x"]}')
    assert clean_json(value) == {"a\ufffd": [None, None, 1.5, 2, True, None, "x"]}
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    cut = clean_json(deep)
    depth = 0
    while isinstance(cut, list):
        cut, depth = cut[0], depth + 1
    assert cut is None
    assert depth == MAX_DEPTH


@given(st.text(st.characters(codec=None, categories=None)))
def test_clean_text_always_encodes(text: str) -> None:
    out = clean_text(text)
    out.encode("utf-8")
    assert len(out) <= MAX_STRING_CHARS
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", out)


_chars = st.one_of(
    st.characters(), st.characters(categories=["Cs"]), st.sampled_from("\x00\x7f\x85\u202e\\")
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(_chars, max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(_chars, max_size=4), inner),
    max_leaves=10,
)


@given(value=_json, ascii_only=st.booleans())
def test_the_quick_path_cleans_exactly_like_the_full_walk(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert loads_clean(text) == clean_json(json.loads(text))
    if ascii_only:  # as bytes off the wire
        assert loads_clean(text.encode()) == clean_json(json.loads(text))


def test_bytes_are_decoded_as_json_loads_decodes_them() -> None:
    assert loads_clean(b'\xef\xbb\xbf{"a": "x"}') == {"a": "x"}  # a UTF-8 BOM
    assert loads_clean('{"a": "\u00e9"}'.encode("utf-16")) == {"a": "\u00e9"}
    assert loads_clean(b'["\xed\xa0\x80"]') == ["\ufffd"]  # a surrogate sent raw
    with pytest.raises(UnicodeDecodeError):
        loads_clean(b"\xff\xfe\xfd")


def test_one_rfc3339_parser() -> None:
    assert parse_rfc3339("2026-11-24T10:00:00Z").timestamp() == 1_795_514_400
    assert parse_rfc3339(" 2026-11-24T18:00:00+08:00 ").timestamp() == 1_795_514_400
    assert parse_rfc3339("2026-11-24t10:00:00z").timestamp() == 1_795_514_400
    for bad, why in [
        ("2026-11-24T10:00:00", "time zone"),
        ("yesterday", "RFC 3339"),
        ("", "RFC 3339"),
        ("9" * 5000, "RFC 3339"),
        ("0001-01-01T00:00:00+01:00", "out of range"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_rfc3339(bad)


def test_event_name_cache_holds_only_short_names() -> None:
    before = _cached_category.cache_info().currsize
    long = "Harsh Braking " + "x" * CACHED_NAME_CHARS
    assert category_from_name(long) == "sensor"
    assert _cached_category.cache_info().currsize == before
    assert category_from_name("Harsh Braking") == "sensor"
    assert _cached_category.cache_info().maxsize == 1024


async def test_auto_request_queue_is_bounded(tmp_path: Path) -> None:
    settings = settings_from_dict(
        {
            "upstream": {
                "base_url": "https://fleet.example.com",
                "api_key": "k" * 16,
                "auth": {"token": "t" * 16},
            },
            "clips": {"auto_request": [{"match": {"min_severity": "minor"}, "cam_id": "C_F"}]},
            "targets": [{"name": "out", "type": "console"}],
        },
        {},
    )
    clock = FakeClock()
    tracker = ClipTracker(settings, None, None, clock, Metrics())  # type: ignore[arg-type]
    data = {"ticket": TICKET, "severity": "severe", "event_type": {"code": 1}}
    notes = [
        build_notification("event.created", dict(data), base_url="x", now=clock.now())
        for _ in range(AUTO_QUEUE_MAX + 50)
    ]
    tracker.on_stored(notes)  # no exception: the overflow waits in the store
    assert tracker._auto.qsize() == AUTO_QUEUE_MAX


async def test_upstream_answer_over_the_size_limit_is_an_error(aiohttp_server: Any) -> None:
    big = b'{"result": true, "code": "S00000", "data": "' + b"x" * MAX_RESPONSE_BYTES + b'"}'

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()  # no Content-Length: the stream itself is capped
        await resp.prepare(request)
        for i in range(0, len(big), 1 << 20):
            await resp.write(big[i : i + (1 << 20)])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/V2/events", events)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        settings = UpstreamSettings.model_validate(
            {
                "base_url": str(server.make_url("/")),
                "api_key": "k" * 16,
                "auth": {"token": "t" * 16},
                "max_retries": 0,
            }
        )
        seen: list[tuple[str, str]] = []
        client = UpstreamClient(
            settings, session, clock=FakeClock(), on_request=lambda e, s: seen.append((e, s))
        )
        with pytest.raises(UpstreamUnavailable, match="over"):
            await client.list_events(since=0, until=1)
        client.close()
        assert seen == [("/V2/events", "too_large")]
