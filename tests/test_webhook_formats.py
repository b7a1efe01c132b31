"""Webhook `format`s against real receivers on loopback (SPEC §6.1).

CloudEvents deliveries are parsed with the CloudEvents SDK's `from_http`; preset
deliveries go to stand-ins for PagerDuty, Teams and Discord that check each body
against the third party's schema or documented limits (tests/third_party.py).
Every example notification type (bridge/examples.py) goes through every format.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage
from cloudevents.core.bindings.http import from_http as core_from_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_http
from multidict import CIMultiDictProxy
from standardwebhooks.webhooks import Webhook
from test_webhook_target import new_secret, target
from third_party import DISCORD_COLOURS, ServerFactory, ThirdParty

from bridge import __version__
from bridge.clock import FakeClock
from bridge.examples import build_examples
from bridge.formats import RenderError
from bridge.formats.template import TemplateFormat, preset_source
from bridge.notifications import Notification
from bridge.store.base import Delivery
from bridge.targets.webhook import WebhookSender

EXAMPLES = build_examples()
PRESETS = ("pagerduty", "teams", "discord")
ROUTING_KEY = "R0UTING-KEY-c0ffee-0123456789abcdef"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    # standardwebhooks compares timestamps with the real time (5 min tolerance).
    return FakeClock(start=float(int(time.time())))


def delivery_of(n: Notification) -> Delivery:
    return Delivery(
        id=1,
        notification_id=n.id,
        type=n.type,
        target="hook",
        body=n.body,
        attempts=0,
        created_at=n.created_at,
    )


async def send(sender: WebhookSender, n: Notification) -> Any:
    return await sender.send(delivery_of(n), n.envelope(), n.body)


def with_data(n: Notification, **changes: Any) -> Notification:
    env = copy.deepcopy(n.envelope())
    env["data"].update(changes)
    from bridge.notifications import build_notification

    return build_notification(
        n.type,
        env["data"],
        base_url=env["source"]["base_url"],
        now=n.created_at,
        notification_id=n.id,
    )


# --------------------------------------------------------------------------- cloudevents


class Recorder:
    def __init__(self) -> None:
        self.hits: list[tuple[CIMultiDictProxy[str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append((request.headers, await request.read()))
        return web.Response(status=202)

    async def serve(self, aiohttp_server: ServerFactory) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return str((await aiohttp_server(app)).make_url("/hook"))


@pytest.mark.parametrize("mode", ["structured", "binary"])
async def test_cloudevents_sdk_parses_every_type_and_signatures_verify(
    mode: str, aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    secret = new_secret()
    rec = Recorder()
    cfg = target(
        await rec.serve(aiohttp_server), format="cloudevents", cloudevents_mode=mode, secret=secret
    )
    sender = WebhookSender(cfg, clock=clock)
    for n in EXAMPLES:
        result = await send(sender, n)
        assert result.ok, result
    assert len(rec.hits) == len(EXAMPLES)
    for n, (headers, body) in zip(EXAMPLES, rec.hits, strict=True):
        env = n.envelope()
        Webhook(secret).verify(body, dict(headers))  # signed over the body as sent
        assert headers["webhook-id"] == n.id
        assert headers["user-agent"] == f"fleet-bridge/{__version__}"
        event = from_http(dict(headers), body)
        assert event["specversion"] == "1.0"
        assert event["id"] == n.id
        assert event["source"] == "https://fleet.example.com"
        assert event["type"] == f"com.visionmax.{n.type}"
        assert event["time"] is not None
        assert event.get("subject") == (env["data"].get("ticket") or env["data"].get("task_id"))
        assert event.data == env["data"]
        # The SDK's newer binding agrees.
        core = core_from_http(HTTPMessage(headers=dict(headers), body=body), JSONFormat())
        assert core.get_id() == n.id
        assert core.get_type() == f"com.visionmax.{n.type}"
        assert core.get_data() == env["data"]
        if mode == "structured":
            assert headers["content-type"] == "application/cloudevents+json"
            assert json.loads(body)["datacontenttype"] == "application/json"
            assert not any(k.lower().startswith("ce-") for k in headers)
        else:
            assert headers["content-type"] == "application/json"
            assert headers["ce-id"] == n.id
            assert json.loads(body) == env["data"]


async def test_cloudevents_type_prefix_and_no_secret(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    rec = Recorder()
    cfg = target(
        await rec.serve(aiohttp_server),
        format="cloudevents",
        cloudevents_mode="binary",
        cloudevents_type_prefix="io.example.fleet.",
    )
    n = EXAMPLES[0]
    assert (await send(WebhookSender(cfg, clock=clock), n)).ok
    [(headers, body)] = rec.hits
    assert from_http(dict(headers), body)["type"] == "io.example.fleet.event.created"
    # Without a secret the Standard Webhooks headers are still there, unsigned.
    assert headers["webhook-id"] == n.id
    assert headers["webhook-timestamp"] == str(int(clock.now()))
    assert "webhook-signature" not in headers


def test_cloudevents_binary_header_values_are_percent_encoded() -> None:
    from bridge.formats.cloudevents import CloudEventsFormat

    fmt = CloudEventsFormat(mode="binary", type_prefix="com.visionmax.")
    env = with_data(EXAMPLES[0], ticket="tické 1%").envelope()
    headers = dict(fmt.render(env, "").headers)
    assert headers["ce-subject"] == "tick%C3%A9%201%25"
    # The SDK's HTTP binding decodes it (its legacy v1 API hands it over encoded).
    message = HTTPMessage(
        headers={**headers, "content-type": "application/json"},
        body=json.dumps(env["data"]).encode(),
    )
    assert core_from_http(message, JSONFormat()).get_subject() == "tické 1%"


# --------------------------------------------------------------------------- presets


async def pagerduty_sender(
    party: ThirdParty,
    aiohttp_server: ServerFactory,
    session: aiohttp.ClientSession,
    clock: FakeClock,
) -> WebhookSender:
    cfg = target(
        await party.serve(aiohttp_server),
        format="template",
        preset="pagerduty",
        vars={"routing_key": ROUTING_KEY},
    )
    return WebhookSender(cfg, clock=clock)


@pytest.mark.parametrize("preset", PRESETS)
async def test_every_example_renders_through_the_preset_and_is_accepted(
    preset: str, aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    secret = new_secret()
    party = ThirdParty(preset, secret=secret)
    cfg = target(
        await party.serve(aiohttp_server),
        format="template",
        preset=preset,
        secret=secret,
        vars={"routing_key": ROUTING_KEY, "tz": "Europe/Amsterdam"},
    )
    sender = WebhookSender(cfg, clock=clock)
    for n in EXAMPLES:
        result = await send(sender, n)
        assert result.ok, (n.type, result, party.problems)
    assert party.problems == []
    assert len(party.bodies) == len(EXAMPLES)
    for h in party.headers:
        assert h["Content-Type"] == "application/json"
        assert h["webhook-id"].startswith("ntf_")


async def test_pagerduty_fields_follow_the_notification(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    party = ThirdParty("pagerduty")
    sender = await pagerduty_sender(party, aiohttp_server, session, clock)
    by_type = {n.type: n for n in EXAMPLES}
    event = by_type["event.created"]
    mapping = {"severe": "critical", "moderate": "error", "minor": "warning", "unknown": "info"}
    for severity in mapping:
        assert (await send(sender, with_data(event, severity=severity))).ok
    long_name = "Ж" * 3000
    assert (await send(sender, with_data(event, driver={"id": 1, "name": long_name}))).ok
    clip = by_type["clip.completed"]
    assert (await send(sender, clip)).ok
    assert party.problems == []

    *sev_bodies, long_body, clip_body = party.bodies
    assert [b["payload"]["severity"] for b in sev_bodies] == list(mapping.values())
    first = sev_bodies[0]
    data = event.envelope()["data"]
    assert first["routing_key"] == ROUTING_KEY
    assert first["dedup_key"] == data["ticket"]
    assert first["payload"]["custom_details"] == {**data, "severity": "severe"}
    assert first["payload"]["timestamp"] == data["occurred_at"]
    loc = data["location"]
    assert first["links"] == [
        {"href": f"https://www.google.com/maps?q={loc['lat']},{loc['lng']}", "text": "Map"}
    ]
    summary = long_body["payload"]["summary"]
    assert len(summary) == 1024
    assert summary.endswith("…")
    clip_data = clip.envelope()["data"]
    assert clip_body["dedup_key"] == clip_data["task_id"]
    assert [link["href"] for link in clip_body["links"]] == [v["url"] for v in clip_data["videos"]]


async def test_pagerduty_429_is_retried_and_202_is_success(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    def respond(n: int) -> web.Response | None:
        if n == 1:
            return web.json_response({"status": "throttled"}, status=429)
        return None

    party = ThirdParty("pagerduty", respond=respond)
    sender = await pagerduty_sender(party, aiohttp_server, session, clock)
    first = await send(sender, EXAMPLES[0])
    assert not first.ok
    assert first.retryable
    assert first.status == 429
    second = await send(sender, EXAMPLES[0])
    assert second.ok
    assert second.status == 202
    assert ROUTING_KEY not in (first.error or "")


async def test_teams_card_has_title_facts_and_link_actions(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    party = ThirdParty("teams")
    cfg = target(await party.serve(aiohttp_server), format="template", preset="teams")
    sender = WebhookSender(cfg, clock=clock)
    by_type = {n.type: n for n in EXAMPLES}
    for t in ("event.created", "clip.completed"):
        assert (await send(sender, by_type[t])).ok
    assert party.problems == []
    event_card, clip_card = (b["attachments"][0]["content"] for b in party.bodies)
    title, _, facts = event_card["body"]
    assert title["text"] == "Minor: FCW"
    assert {"title": "Driver", "value": "Gus Evans"} in facts["facts"]
    assert [a["title"] for a in event_card["actions"]] == ["Map"]
    videos = by_type["clip.completed"].envelope()["data"]["videos"]
    assert [a["url"] for a in clip_card["actions"]] == [v["url"] for v in videos]


async def test_a_card_that_breaks_the_schema_is_refused_by_the_stand_in(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """The schema check is real: a FactSet value that is a number is not a card."""
    party = ThirdParty("teams")
    bad = preset_source("teams").replace('"value": value | string', '"value": 7')
    assert bad != preset_source("teams")
    cfg = target(await party.serve(aiohttp_server), format="template", template=bad)
    result = await send(WebhookSender(cfg, clock=clock), EXAMPLES[0])
    assert result.status == 400
    assert not result.retryable
    assert party.problems


async def test_discord_embed_colour_and_mentions(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    party = ThirdParty("discord")
    cfg = target(await party.serve(aiohttp_server), format="template", preset="discord")
    sender = WebhookSender(cfg, clock=clock)
    event = EXAMPLES[0]
    for severity in DISCORD_COLOURS:
        n = with_data(event, severity=severity, driver={"id": 1, "name": "@everyone"})
        assert (await send(sender, n)).ok
    assert party.problems == []
    colours = [b["embeds"][0]["color"] for b in party.bodies]
    assert colours == list(DISCORD_COLOURS.values())
    assert all(b["allowed_mentions"] == {"parse": []} for b in party.bodies)


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({}, {"message": "You are being rate limited.", "retry_after": 2.5, "global": False}, 2.5),
        ({"Retry-After": "1"}, {"retry_after": 0.8}, 1.0),  # the longer wins
        ({"Retry-After": "1"}, {"retry_after": 4.25}, 4.25),
        ({}, {"retry_after": "soon"}, None),
    ],
)
async def test_discord_429_retry_after_in_the_json_body_holds_the_target(
    headers: dict[str, str],
    body: dict[str, Any],
    expected: float | None,
    aiohttp_server: ServerFactory,
    session: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    party = ThirdParty(
        "discord", respond=lambda _n: web.json_response(body, status=429, headers=headers)
    )
    cfg = target(await party.serve(aiohttp_server), format="template", preset="discord")
    result = await send(WebhookSender(cfg, clock=clock), EXAMPLES[0])
    assert not result.ok
    assert result.retryable
    assert result.status == 429
    assert result.retry_after == expected


# --------------------------------------------------------------------------- templates


async def test_inline_template_sees_the_documented_variables_and_filters(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    rec = Recorder()
    template = (
        "{{ target }}|{{ type }}|{{ notification.id }}|{{ data.driver.name }}|"
        "{{ data.occurred_at | local_time('Europe/Amsterdam') }}|{{ data.location | map_link }}|"
        "{{ vars.greeting }}|{{ data.vehicle | tojson }}"
    )
    cfg = target(
        await rec.serve(aiohttp_server),
        format="template",
        template=template,
        content_type="text/plain; charset=utf-8",
        vars={"greeting": "hallo"},
    )
    n = EXAMPLES[0]
    assert (await send(WebhookSender(cfg, clock=clock), n)).ok
    [(headers, body)] = rec.hits
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert body.decode() == (
        f"hook|event.created|{n.id}|Gus Evans|2026-11-24 07:00:10 CET|"
        "https://www.google.com/maps?q=32.746489,-96.680383|hallo|"
        '{"id":1005}'
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ('{"ticket": {{ data.no_such_key | tojson }}}', "no attribute 'no_such_key'"),
        ('{"ticket": {{ data.ticket }}}', "not valid JSON"),  # a string without quotes
        ("{{ ''.__class__.__mro__ }}", "SecurityError"),
        ("{{ data.occurred_at | local_time('Mars/Olympus') }}", "unknown time zone"),
        ("{{ vars.key ~ (1 / 0) }}", "ZeroDivisionError"),
    ],
)
async def test_a_render_error_is_a_permanent_failure_and_nothing_is_sent(
    template: str,
    message: str,
    aiohttp_server: ServerFactory,
    session: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    rec = Recorder()
    cfg = target(
        await rec.serve(aiohttp_server),
        format="template",
        template=template,
        vars={"key": "sup3r-s3cret-value"},
    )
    result = await send(WebhookSender(cfg, clock=clock), EXAMPLES[0])
    assert not result.ok
    assert result.retryable is False  # dead at once
    assert message in (result.error or "")
    assert "sup3r-s3cret-value" not in (result.error or "")
    assert rec.hits == []


def test_a_render_error_never_shows_a_vars_value() -> None:
    fmt = TemplateFormat(
        "{{ vars.key | int(base=2) | local_time(vars.key) }}",
        target="t",
        variables={"key": "sup3r-s3cret-value"},
    )
    with pytest.raises(RenderError) as err:
        fmt.render(EXAMPLES[0].envelope())
    assert "unknown time zone" in str(err.value)
    assert "sup3r-s3cret-value" not in str(err.value)


def test_json_bodies_are_sent_compact_and_other_bodies_as_rendered() -> None:
    env = EXAMPLES[0].envelope()
    json_fmt = TemplateFormat('{\n  "a" : [1, 2]\n}', target="t", variables={})
    assert json_fmt.render(env).body == '{"a":[1,2]}'
    text_fmt = TemplateFormat("a : b\n", target="t", variables={}, content_type="text/plain")
    assert text_fmt.render(env).body == "a : b\n"
    ce_fmt = TemplateFormat(
        "{ nope", target="t", variables={}, content_type="application/cloudevents+json"
    )
    with pytest.raises(RenderError, match="not valid JSON"):
        ce_fmt.render(env)
