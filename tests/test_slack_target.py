"""The Slack target against a fake Slack on loopback, alone and through the real dispatcher.

`FakeSlack` is a real aiohttp server speaking both the incoming-webhook shape
(`POST /services/…`, answers `ok` or a text error) and the Web API's
`chat.postMessage` (checks the Bearer token, answers `{"ok": true, "ts", "channel"}`
or `{"ok": false, "error"}`). Like Slack, it rejects messages that break Block Kit
limits (`invalid_blocks`). Tests can script the next answers (429 + Retry-After,
`ok: false` errors, HTTP errors) and read what arrived, with arrival times.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from conftest import wait_for
from structlog.testing import capture_logs
from test_slack_format import CLIP_KW, EVENT_ITEM, HOSTILE, TASK, block_problems

from bridge.clock import SystemClock
from bridge.dispatch import Dispatcher, dispatch_options
from bridge.event_types import EventTypeTable
from bridge.metrics import Metrics
from bridge.normalize import clip_data, normalize_event
from bridge.notifications import Notification, build_notification
from bridge.settings import SlackTarget, StoreSettings
from bridge.store import open_store
from bridge.store.base import Delivery, DeliveryState, IngestTx, NewNotification, Store
from bridge.storm import GROUP_TYPE, group_data
from bridge.targets.base import LazyEnvelope, SendResult
from bridge.targets.slack import PERMANENT_ERRORS, THREAD_KIND, SlackSender

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

BOT_TOKEN = "xoxb-1111-2222-SeCrEtToKeNvalue"
WEBHOOK_PATH = "/services/T0000/B0000/XXXXsecretXXXXpathXXXX"
CHANNEL_ID = "C0FLEET01"
TICKET = EVENT_ITEM["ticket"]
TABLE = EventTypeTable({})


# --------------------------------------------------------------------------- fake Slack


@dataclass
class Hit:
    """One request Slack received."""

    kind: str  # "api" or "webhook"
    at: float  # time.monotonic() on arrival
    authorization: str | None
    raw: str
    body: dict[str, Any]
    status: int = 0  # what Slack answered
    ts: str | None = None  # the ts of the posted message (api, when ok)


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | str | None = None  # None: the normal success answer
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # answer this much later (a slow Slack)


@dataclass
class FakeSlack:
    """A local Slack: incoming webhook + chat.postMessage."""

    token: str = BOT_TOKEN
    hits: list[Hit] = field(default_factory=list)
    script: deque[Reply] = field(default_factory=deque)
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def answer(self, *replies: Reply) -> None:
        """Answer the next requests (either kind) with these, in order."""
        self.script.extend(replies)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/chat.postMessage", self._post_message)
        app.router.add_post(WEBHOOK_PATH, self._webhook)
        return app

    async def _record(self, request: web.Request, kind: str) -> tuple[Hit, Reply | None]:
        raw = await request.text()
        hit = Hit(kind, time.monotonic(), request.headers.get("Authorization"), raw, {})
        with contextlib.suppress(ValueError):
            hit.body = json.loads(raw)
        self.hits.append(hit)
        reply = self.script.popleft() if self.script else None
        if reply is not None and reply.delay_s:
            await asyncio.sleep(reply.delay_s)  # a slow answer, not synchronization
        return hit, reply

    async def _post_message(self, request: web.Request) -> web.Response:
        hit, reply = await self._record(request, "api")
        if reply is not None and reply.body is not None:
            hit.status = reply.status
            return _respond(reply)
        if not request.content_type.startswith("application/json"):
            return self._api(hit, {"ok": False, "error": "invalid_post_type"})
        if hit.authorization is None:
            return self._api(hit, {"ok": False, "error": "not_authed"})
        if hit.authorization != f"Bearer {self.token}":
            return self._api(hit, {"ok": False, "error": "invalid_auth"})
        if not hit.body.get("channel"):
            return self._api(hit, {"ok": False, "error": "channel_not_found"})
        if block_problems(hit.body):
            return self._api(hit, {"ok": False, "error": "invalid_blocks"})
        hit.ts = f"1764000000.{next(self._ts):06d}"
        hit.status = reply.status if reply else 200
        return self._api(hit, {"ok": True, "channel": CHANNEL_ID, "ts": hit.ts})

    def _api(self, hit: Hit, body: dict[str, Any]) -> web.Response:
        hit.status = 200
        return web.json_response(body)

    async def _webhook(self, request: web.Request) -> web.Response:
        hit, reply = await self._record(request, "webhook")
        if reply is not None and reply.body is not None:
            hit.status = reply.status
            return _respond(reply)
        if set(hit.body) != {"text", "blocks"} or block_problems(hit.body):
            hit.status = 400
            return web.Response(status=400, text="invalid_blocks")
        hit.status = 200
        return web.Response(text="ok")

    # -- views -------------------------------------------------------------------------

    def delivered(self) -> list[Hit]:
        return [h for h in self.hits if h.status == 200 and (h.ts or h.kind == "webhook")]


def _respond(reply: Reply) -> web.Response:
    if isinstance(reply.body, dict):
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)
    return web.Response(status=reply.status, text=reply.body or "", headers=reply.headers)


@pytest.fixture
async def slack(aiohttp_server: ServerFactory) -> tuple[FakeSlack, TestServer]:
    fake = FakeSlack()
    server = await aiohttp_server(fake.app())
    return fake, server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(StoreSettings(url=f"sqlite:///{tmp_path}/b.db"), SystemClock())
    await s.open()
    yield s
    await s.close()


# --------------------------------------------------------------------------- builders


def bot_cfg(server: TestServer, **extra: Any) -> SlackTarget:
    return SlackTarget.model_validate(
        {
            "name": "alerts",
            "type": "slack",
            "bot_token": BOT_TOKEN,
            "channel": "#fleet-safety",
            "api_base_url": str(server.make_url("/api")),
            "tz": "Asia/Taipei",
        }
        | extra
    )


def webhook_cfg(server: TestServer, **extra: Any) -> SlackTarget:
    return SlackTarget.model_validate(
        {"name": "hook", "type": "slack", "webhook_url": str(server.make_url(WEBHOOK_PATH))} | extra
    )


def event(
    type_: str = "event.created", revision: int = 1, changed: list[str] | None = None, **item: Any
) -> Notification:
    data = normalize_event(EVENT_ITEM | item, TABLE).data
    data |= {"revision": revision, "changed": changed or []}
    return build_notification(type_, data, base_url="https://fleet.example.com", now=time.time())


def updated(**item: Any) -> Notification:
    return event("event.updated", 2, ["media.has_video"], **item)


def clip(type_: str = "clip.completed", ticket: str = TICKET) -> Notification:
    videos = [{"cam_id": "C_F", "url": "https://v.example.com/f.mp4?a=1&b=2"}]
    data = clip_data(TASK, **CLIP_KW, videos=videos, ticket=ticket)
    return build_notification(type_, data, base_url="https://fleet.example.com", now=time.time())


def delivery(n: Notification, target: str = "alerts") -> Delivery:
    return Delivery(1, n.id, n.type, target, n.body, attempts=0, created_at=time.time())


async def send(sender: SlackSender, n: Notification) -> SendResult:
    """One send, the way the dispatcher calls it (without redaction)."""
    return await sender.send(delivery(n, sender.name), LazyEnvelope(n.body), n.body)


# --------------------------------------------------------------------------- bot mode


async def test_bot_posts_block_kit_to_chat_post_message_with_the_bearer_token(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, store: Store
) -> None:
    fake, server = slack
    sender = SlackSender(bot_cfg(server), session, store=store)
    result = await send(sender, event())
    assert result == SendResult(ok=True, status=200)
    [hit] = fake.hits
    assert hit.kind == "api"
    assert hit.authorization == f"Bearer {BOT_TOKEN}"
    assert set(hit.body) == {"channel", "text", "blocks", "unfurl_links"}
    assert hit.body["channel"] == "#fleet-safety"
    assert hit.body["unfurl_links"] is False
    assert hit.body["blocks"][0]["text"]["text"] == "🔴 Harsh Braking"
    assert hit.body["text"].startswith("🔴 Severe: Harsh Braking — vehicle 123, driver Jane Doe")
    assert "2025-11-25 00:00:00 CST" in hit.body["text"]  # the target's tz
    # The first message of a ticket starts its thread.
    stored = await store.get_json(THREAD_KIND, f"alerts:{TICKET}")
    assert stored == {"ts": hit.ts, "channel": CHANNEL_ID}


async def test_follow_ups_are_posted_in_the_thread_of_the_first_message(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, store: Store
) -> None:
    fake, server = slack
    sender = SlackSender(bot_cfg(server), session, store=store)
    for n in (event(), clip("clip.updated"), clip("clip.completed"), updated()):
        assert (await send(sender, n)).ok
    first, *follow_ups = fake.hits
    assert "thread_ts" not in first.body
    assert [h.body["thread_ts"] for h in follow_ups] == [first.ts] * 3
    assert {h.body["channel"] for h in follow_ups} == {CHANNEL_ID}
    # Another ticket gets its own thread; a notification without a ticket none.
    assert (await send(sender, event(ticket="other-ticket"))).ok
    assert "thread_ts" not in fake.hits[-1].body
    assert (await send(sender, clip(ticket="other-ticket"))).ok
    assert fake.hits[-1].body["thread_ts"] == fake.hits[-2].ts
    test = build_notification("bridge.test", {"target": "alerts"}, base_url="x", now=time.time())
    assert (await send(sender, test)).ok
    assert "thread_ts" not in fake.hits[-1].body


async def test_a_group_is_posted_readable_and_its_members_follow_ups_join_its_thread(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, store: Store
) -> None:
    fake, server = slack
    sender = SlackSender(bot_cfg(server), session, store=store)
    members = [event(ticket=TICKET), event(ticket="t-2", driver_name=HOSTILE)]
    data = group_data("muted", {"vehicle.id": 123}, members, 20)
    group = build_notification(GROUP_TYPE, data, base_url="https://fleet.example.com", now=0)
    assert (await send(sender, group)).ok
    assert (await send(sender, updated())).ok
    first, follow_up = fake.hits
    assert first.body["blocks"][0]["text"]["text"] == "🔴 2 events — vehicle 123"
    assert "held during quiet hours" in first.body["text"]
    assert "<!channel>" not in json.dumps(first.body)
    assert block_problems(first.body) == []
    assert follow_up.body["thread_ts"] == first.ts


async def test_an_unusable_thread_is_replaced_by_a_new_top_level_message(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, store: Store
) -> None:
    fake, server = slack
    sender = SlackSender(bot_cfg(server), session, store=store)
    assert (await send(sender, event())).ok
    fake.answer(Reply(body={"ok": False, "error": "thread_not_found"}))
    with capture_logs() as logs:
        assert (await send(sender, updated())).ok
    refused, reposted = fake.hits[1:]
    assert refused.body["thread_ts"] == fake.hits[0].ts
    assert "thread_ts" not in reposted.body
    assert any(e["event"] == "slack thread unusable; posting at the top level" for e in logs)
    # The new message is now the ticket's thread.
    assert (await send(sender, clip())).ok
    assert fake.hits[-1].body["thread_ts"] == reposted.ts


TRANSIENT_ERRORS = [
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
    "some_brand_new_error",
]


@pytest.mark.parametrize(
    ("error", "retryable"),
    [(e, False) for e in sorted(PERMANENT_ERRORS)] + [(e, True) for e in TRANSIENT_ERRORS],
)
async def test_every_ok_false_error_is_classified(
    slack: tuple[FakeSlack, TestServer],
    session: aiohttp.ClientSession,
    store: Store,
    error: str,
    retryable: bool,
) -> None:
    fake, server = slack
    fake.answer(Reply(body={"ok": False, "error": error}))
    result = await send(SlackSender(bot_cfg(server), session, store=store), event())
    assert result == SendResult(
        ok=False, status=200, error=f"slack error: {error}", retryable=retryable
    )
    assert await store.get_json(THREAD_KIND, f"alerts:{TICKET}") is None


@pytest.mark.parametrize(
    "required",
    [
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_blocks",
        "invalid_blocks_format",
        "msg_too_long",
        "restricted_action",
    ],
)
def test_the_documented_permanent_errors_are_all_listed(required: str) -> None:
    assert required in PERMANENT_ERRORS


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}),
            SendResult(ok=False, status=429, error="HTTP 429: ratelimited", retry_after=1.0),
        ),
        (
            Reply(200, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}),
            SendResult(ok=False, status=200, error="HTTP 200: ratelimited", retry_after=7.0),
        ),
        (  # no Retry-After: hold the target a second anyway
            Reply(429, "", {}),
            SendResult(ok=False, status=429, error="HTTP 429: rate limited", retry_after=1.0),
        ),
        (
            Reply(503, "", {"Retry-After": "4"}),
            SendResult(ok=False, status=503, error="HTTP 503", retry_after=4.0),
        ),
        (
            Reply(500, {"ok": False, "error": "internal_error"}),
            SendResult(False, 500, "HTTP 500: internal_error"),
        ),
        (
            Reply(502, "<html>Bad Gateway</html>"),
            SendResult(False, 502, "HTTP 502: <html>Bad Gateway</html>"),
        ),
        (Reply(408, ""), SendResult(False, 408, "HTTP 408")),
        (Reply(404, "Not Found"), SendResult(False, 404, "HTTP 404: Not Found", retryable=False)),
        (
            Reply(302, "", {"Location": "https://elsewhere.example"}),
            SendResult(False, 302, "HTTP 302 (redirect not followed)"),
        ),
        (
            Reply(200, "<html>captive portal</html>"),
            SendResult(False, 200, "HTTP 200: <html>captive portal</html>"),
        ),
        (Reply(200, {"ok": False}), SendResult(False, 200, "slack error: unknown")),
    ],
)
async def test_http_level_answers_are_classified(
    slack: tuple[FakeSlack, TestServer],
    session: aiohttp.ClientSession,
    store: Store,
    reply: Reply,
    expected: SendResult,
) -> None:
    fake, server = slack
    fake.answer(reply)
    result = await send(SlackSender(bot_cfg(server), session, store=store), event())
    assert result == expected


async def test_a_wrong_token_is_a_permanent_failure(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, store: Store
) -> None:
    fake, server = slack
    fake.token = "xoxb-the-right-one"
    result = await send(SlackSender(bot_cfg(server), session, store=store), event())
    assert result == SendResult(
        ok=False, status=200, error="slack error: invalid_auth", retryable=False
    )


# --------------------------------------------------------------------------- webhook mode


async def test_webhook_mode_posts_text_and_blocks(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, store: Store
) -> None:
    fake, server = slack
    sender = SlackSender(webhook_cfg(server), session, store=store)
    assert await send(sender, event()) == SendResult(ok=True, status=200)
    assert await send(sender, clip()) == SendResult(ok=True, status=200)
    first, second = fake.hits
    assert first.kind == "webhook"
    assert first.authorization is None
    assert set(first.body) == {"text", "blocks"}
    assert first.body["blocks"][0]["text"]["text"] == "🔴 Harsh Braking"
    assert "2025-11-24 16:00:00 UTC" in first.body["text"]  # default tz
    assert "thread_ts" not in second.body  # webhooks cannot thread
    assert await store.list_json(THREAD_KIND) == []


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            Reply(400, "invalid_payload"),
            SendResult(False, 400, "HTTP 400: invalid_payload", retryable=False),
        ),
        (Reply(404, "no_service"), SendResult(False, 404, "HTTP 404: no_service", retryable=False)),
        (
            Reply(404, "channel_not_found"),
            SendResult(False, 404, "HTTP 404: channel_not_found", retryable=False),
        ),
        (
            Reply(404, "no_active_hooks"),
            SendResult(False, 404, "HTTP 404: no_active_hooks", retryable=False),
        ),
        (
            Reply(403, "action_prohibited"),
            SendResult(False, 403, "HTTP 403: action_prohibited", retryable=False),
        ),
        (
            Reply(410, "channel_is_archived"),
            SendResult(False, 410, "HTTP 410: channel_is_archived", retryable=False),
        ),
        (
            Reply(429, "rate_limited", {"Retry-After": "1"}),
            SendResult(False, 429, "HTTP 429: rate_limited", retry_after=1.0),
        ),
        (Reply(500, "rollup_error"), SendResult(False, 500, "HTTP 500: rollup_error")),
        (Reply(503, "", {"Retry-After": "2"}), SendResult(False, 503, "HTTP 503", retry_after=2.0)),
    ],
)
async def test_webhook_errors_are_classified(
    slack: tuple[FakeSlack, TestServer],
    session: aiohttp.ClientSession,
    store: Store,
    reply: Reply,
    expected: SendResult,
) -> None:
    fake, server = slack
    fake.answer(reply)
    result = await send(SlackSender(webhook_cfg(server), session, store=store), event())
    assert result == expected


# --------------------------------------------------------------------------- safety


async def test_hostile_vendor_strings_reach_slack_inert(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, store: Store
) -> None:
    fake, server = slack
    hostile = "<!channel> <http://evil|click>"
    n = event(driver_name=hostile, lat=None, lng=None)
    for cfg in (bot_cfg(server), webhook_cfg(server)):
        assert (await send(SlackSender(cfg, session, store=store), n)).ok
    assert len(fake.hits) == 2
    for hit in fake.hits:
        assert "<!channel>" not in hit.raw
        assert "<http" not in hit.raw
        assert "&lt;!channel&gt; &lt;http://evil|click&gt;" in hit.body["text"]
        driver = hit.body["blocks"][1]["fields"][3]["text"]
        assert driver == "*Driver*\n&lt;!channel&gt; &lt;http://evil|click&gt; (#7)"


async def test_absurdly_long_vendor_strings_are_accepted_by_slack(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, store: Store
) -> None:
    fake, server = slack
    huge = "🚚" * 10_000
    n = event(type_name=huge, driver_name=huge + HOSTILE, serial_number=huge)
    assert (await send(SlackSender(bot_cfg(server), session, store=store), n)).ok
    assert fake.hits[0].ts is not None  # the fake Slack found no Block Kit problem


async def test_errors_and_logs_never_carry_the_token_or_the_webhook_url(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, store: Store
) -> None:
    fake, server = slack
    hook_url = str(server.make_url(WEBHOOK_PATH))
    # A misbehaving proxy that echoes what it was sent.
    fake.answer(
        Reply(500, f"upstream failed for Bearer {BOT_TOKEN}"),
        Reply(400, f"bad request to {hook_url} ({WEBHOOK_PATH})"),
        Reply(200, {"ok": False, "error": f"bad token {BOT_TOKEN}"}),
    )
    bot = SlackSender(bot_cfg(server), session, store=store)
    hook = SlackSender(webhook_cfg(server), session, store=store)
    down = SlackSender(
        webhook_cfg(server, webhook_url=f"http://127.0.0.1:{unused_port()}{WEBHOOK_PATH}"),
        session,
        store=store,
    )
    with capture_logs() as logs:
        results = [
            await send(bot, event()),
            await send(hook, event()),
            await send(bot, event()),
            await send(down, event()),
        ]
    assert [r.ok for r in results] == [False] * 4
    assert results[0].error == "HTTP 500: upstream failed for Bearer ***"
    assert "***" in str(results[1].error)
    assert results[2].error == "slack error: unknown"
    assert str(results[3].error).startswith("connection failed")
    text = json.dumps([r.error for r in results]) + json.dumps(logs, default=str)
    for secret in (BOT_TOKEN, hook_url, WEBHOOK_PATH, "XXXXsecretXXXXpathXXXX"):
        assert secret not in text
    assert BOT_TOKEN not in repr(bot_cfg(server))


async def test_a_slack_that_does_not_answer_times_out_as_retryable(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, store: Store
) -> None:
    fake, server = slack
    fake.answer(Reply(body="late", delay_s=5))
    sender = SlackSender(bot_cfg(server, timeout_s=0.2), session, store=store)
    started = time.monotonic()
    result = await send(sender, event())
    assert result == SendResult(ok=False, error="timeout after 0.2s")
    assert time.monotonic() - started < 2


# --------------------------------------------------------------------------- through the dispatcher


@dataclass
class Rig:
    """A real SQLite store, a SlackSender and the real dispatcher for one target."""

    cfg: SlackTarget
    store: Store
    dispatcher: Dispatcher

    async def put(self, *notifications: Notification) -> None:
        async def fn(tx: IngestTx) -> None:
            await tx.add_notifications([NewNotification(n, [self.cfg.name]) for n in notifications])

        await self.store.ingest(fn)

    async def stop(self) -> None:
        await self.dispatcher.wait_idle()
        await self.dispatcher.stop(5)
        await self.store.close()

    async def states(self) -> dict[str, int]:
        return (await self.store.queue_counts()).get(self.cfg.name, {})


async def start_rig(cfg: SlackTarget, db: Path, session: aiohttp.ClientSession) -> Rig:
    clock = SystemClock()
    store = open_store(StoreSettings(url=f"sqlite:///{db}"), clock)
    await store.open()
    await store.recover()
    sender = SlackSender(cfg, session, store=store, clock=clock)
    dispatcher = Dispatcher(dispatch_options(cfg), sender, store, clock, Metrics())
    await dispatcher.start()
    return Rig(cfg, store, dispatcher)


FAST_RETRY = {"retry": {"base_delay_s": 0.05, "max_delay_s": 2}}


async def test_retry_after_holds_the_target_and_everything_arrives(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake, server = slack
    fake.answer(Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}))
    cfg = bot_cfg(server, rate_limit_per_s=10, **FAST_RETRY)
    rig = await start_rig(cfg, tmp_path / "b.db", session)
    sent = [event(ticket=f"t-{i}") for i in range(3)]
    await rig.put(*sent)
    await wait_for(lambda: len(fake.delivered()) == 3, message="all three delivered")
    await rig.dispatcher.wait_idle()
    limited = fake.hits[0]
    assert limited.status == 429
    # Nothing reached Slack inside the Retry-After window (10/s would allow ~10).
    assert all(h.at - limited.at >= 0.98 for h in fake.hits[1:])
    ids = {n.id for n in sent}
    delivered_ids = {h.body["blocks"][-1]["elements"][-1]["text"] for h in fake.delivered()}
    assert delivered_ids == ids  # each exactly once
    assert len(fake.hits) == 4
    assert await rig.states() == {"pending": 0, "in_flight": 0, "dead": 0}
    await rig.stop()


async def test_the_default_rate_limit_spaces_messages_a_second_apart(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake, server = slack
    cfg = webhook_cfg(server)
    assert cfg.rate_limit_per_s == 1
    rig = await start_rig(cfg, tmp_path / "b.db", session)
    await rig.put(*(event(ticket=f"t-{i}") for i in range(3)))
    await wait_for(lambda: len(fake.delivered()) == 3, message="three messages")
    gaps = [b.at - a.at for a, b in itertools.pairwise(fake.hits)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    await rig.stop()


async def test_a_follow_up_sent_while_the_first_message_is_in_flight_joins_its_thread(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake, server = slack
    fake.answer(Reply(delay_s=0.3))  # Slack is slow to answer the first message
    rig = await start_rig(bot_cfg(server, rate_limit_per_s=50), tmp_path / "b.db", session)
    await rig.put(event(), updated(), clip())
    await wait_for(lambda: len(fake.delivered()) == 3, message="three messages")
    first, *rest = fake.hits
    assert "thread_ts" not in first.body
    assert [h.body.get("thread_ts") for h in rest] == [first.ts, first.ts]
    await rig.stop()


async def test_threads_survive_a_restart(
    slack: tuple[FakeSlack, TestServer], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake, server = slack
    db = tmp_path / "b.db"
    cfg = bot_cfg(server, rate_limit_per_s=50)
    rig = await start_rig(cfg, db, session)
    await rig.put(event())
    await wait_for(lambda: len(fake.delivered()) == 1, message="the first message")
    await rig.stop()
    first = fake.hits[0]
    assert first.ts is not None

    # A new process: new store connection, sender and dispatcher on the same file.
    rig = await start_rig(cfg, db, session)
    await rig.put(updated(), clip("clip.completed"))
    await wait_for(lambda: len(fake.delivered()) == 3, message="the follow-ups")
    assert [h.body.get("thread_ts") for h in fake.hits[1:]] == [first.ts, first.ts]
    assert {h.body["channel"] for h in fake.hits[1:]} == {CHANNEL_ID}
    await rig.dispatcher.wait_idle()
    rows, _ = await rig.store.list_deliveries(target=cfg.name)
    assert {r.state for r in rows} == {DeliveryState.DELIVERED}
    await rig.stop()
