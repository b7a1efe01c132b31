"""Video links and detail (SPEC §5.1) end to end: simulator → bridge → real receivers.

The simulator and the bridge share one FakeClock; the simulator signs media URLs
anew on every call and counts GetVideoDetail per ticket, so these tests count the
vendor calls exactly. Targets are a real Standard Webhooks receiver, the fake Slack
of test_slack_target (bot token: thread replies) and, where it matters, a real
Mosquitto broker.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bridge_rig import ClientFactory, Rig, ServerFactory, deep_merge
from bridge_rig import make_rig as make_bridge_rig
from conftest import wait_for
from envelope_schema import validate_envelope
from mosquitto import Mosquitto, Subscriber
from structlog.testing import capture_logs
from test_push import PUSH_CONFIG, drained, event_push, push
from test_slack_target import BOT_TOKEN, FakeSlack, Hit
from webhook_receiver import Receiver

from bridge.clock import FakeClock
from bridge.dedup import VIDEOS, VIDEOS_DUE, decide
from bridge.display import CAMERA_NAMES
from bridge.enrich import DETAIL_MAX_BYTES
from bridge.event_types import EventTypeTable
from bridge.normalize import event_videos, normalize_event
from bridge.simulator import FaultSpec, Simulator
from bridge.video_links import wants_videos, with_videos

TABLE = EventTypeTable({})
VIDEO_DETAIL = "/V2/event/GetVideoDetail"
DETAIL = "/V2/event/detailV2"


# --------------------------------------------------------------------------- pure decisions

T0 = 1_764_000_000.0
ITEM: dict[str, Any] = {
    "ticket": "tk-1",
    "timestamp": int(T0),
    "asset_info": {"has_video": True, "uploading": False},
    "videos_count": 1,
    "videos_total_count": 2,
}
VIDEO = {"cam_id": "C_F", "url": "https://m.example.com/f.mp4?sig=1", "duration": 30}


def test_wants_videos_once_per_ticket_and_media_change() -> None:
    ev = normalize_event(ITEM, TABLE)
    assert wants_videos(ev, None, T0 + 5, 900)  # first sighting, video there
    assert not wants_videos(ev, None, T0 + 901, 900)  # too old: a catch-up
    no_video = normalize_event(ITEM | {"asset_info": {"has_video": False}}, TABLE)
    assert not wants_videos(no_video, None, T0 + 5, 900)

    fetched = with_videos(ev, event_videos([VIDEO]))
    known = decide(None, ev.ticket, fetched.fingerprint, T0).ticket_state
    assert not wants_videos(ev, known, T0 + 30, 900)  # re-scan of an unchanged ticket
    more = normalize_event(ITEM | {"videos_count": 2}, TABLE)
    assert wants_videos(more, known, T0 + 30, 900)  # another clip arrived
    done = normalize_event(ITEM | {"asset_info": {"has_video": True, "uploading": True}}, TABLE)
    assert not wants_videos(done, known, T0 + 30, 900)  # no file came with that change

    failed = with_videos(ev, None)
    owed = decide(None, ev.ticket, failed.fingerprint, T0).ticket_state
    assert wants_videos(ev, owed, T0 + 30, 900)  # the failed fetch is owed
    assert not wants_videos(ev, owed, T0 + 901, 900)  # ...until the event is too old
    pushed = decide(None, ev.ticket, ev.fingerprint, T0).ticket_state  # never fetched
    assert wants_videos(ev, pushed, T0 + 30, 900)


def test_with_videos_puts_files_in_data_and_only_cameras_in_the_fingerprint() -> None:
    ev = normalize_event(ITEM, TABLE)
    out = with_videos(ev, event_videos([VIDEO, {"cam_id": "C_I", "url": None}]))
    assert out.data["media"]["videos"] == [
        {"cam_id": "C_F", "url": VIDEO["url"], "duration_s": 30, "expires_at": None}
    ]
    assert out.fingerprint[VIDEOS] == ["C_F"]
    assert out.fingerprint[VIDEOS_DUE] is False
    assert ev.data["media"]["videos"] is None  # the input is untouched
    failed = with_videos(ev, None)
    assert failed.data["media"]["videos"] is None
    assert VIDEOS not in failed.fingerprint
    assert failed.fingerprint[VIDEOS_DUE] is True


# --------------------------------------------------------------------------- end to end


@dataclass
class VRig:
    """The shared bridge rig (simulator, webhook receiver) plus a fake Slack (bot token)."""

    rig: Rig
    slack: FakeSlack

    @property
    def clock(self) -> FakeClock:
        return self.rig.clock

    @property
    def sim(self) -> Simulator:
        return self.rig.sim

    @property
    def hook(self) -> Receiver:
        return self.rig.receiver

    async def poll(self) -> None:
        await self.rig.run("events")

    async def settle(self) -> None:
        await self.rig.settle()

    def calls(self, path: str = VIDEO_DETAIL) -> int:
        """Requests the vendor got on `path`, faulted ones included."""
        return sum(1 for r in self.sim.requests if r.path == path)

    def metric(self, name: str, outcome: str) -> float:
        value = self.rig.bridge.metrics.registry.get_sample_value(name, {"outcome": outcome})
        return value or 0.0

    def events(self, type_: str, ticket: str) -> list[dict[str, Any]]:
        return [e for e in self.hook.of_type(type_) if e["data"]["ticket"] == ticket]

    async def new_event(self, **overrides: Any) -> str:
        """An event arriving now (a few seconds before the next poll)."""
        item = self.sim.add_event(**overrides)
        self.clock.advance(5)
        return str(item["ticket"])


@pytest.fixture
def make_rig(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, tmp_path: Path
) -> Callable[..., Awaitable[VRig]]:
    async def factory(
        *,
        config: dict[str, Any] | None = None,
        extra_targets: tuple[dict[str, Any], ...] = (),
        **sim: Any,
    ) -> VRig:
        slack = FakeSlack()
        slack_server = await aiohttp_server(slack.app())
        slack_target = {
            "name": "slack",
            "type": "slack",
            "bot_token": BOT_TOKEN,
            "channel": "#fleet-safety",
            "api_base_url": str(slack_server.make_url("/api")),
            # No pacing: it runs on the fake clock, which only the test moves.
            "rate_limit_per_s": None,
            "max_in_flight": 1,
        }
        # Every poll re-scans the lookback window (the tests move the clock 30 s a poll):
        # the re-scan is what sees a ticket again and retries its owed video links.
        rescan_each_poll = {"poll": {"events": {"rescan_interval_s": 1}}}
        rig = await make_bridge_rig(
            aiohttp_server,
            aiohttp_client,
            tmp_path,
            config=deep_merge(rescan_each_poll, config or {}),
            sim={"seed": 13, **sim},
            extra_targets=(slack_target, *extra_targets),
        )
        return VRig(rig, slack)

    return factory


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    async with Mosquitto(tmp_path / "broker") as b:
        yield b


def slack_links(hit: Hit) -> list[str]:
    """The `<url|name>` links of a Slack message's Videos section."""
    for block in hit.body["blocks"]:
        text = block.get("text", {}).get("text", "")
        if text.startswith("*Videos*"):
            return [line.removeprefix("• ").split(">")[0] + ">" for line in text.splitlines()[1:]]
    return []


def slack_link(video: dict[str, Any]) -> str:
    return f"<{video['url'].replace('&', '&amp;')}|{CAMERA_NAMES[video['cam_id']]}>"


async def test_a_videos_urls_reach_webhook_mqtt_and_the_slack_thread(
    make_rig: Callable[..., Awaitable[VRig]], broker: Mosquitto
) -> None:
    mqtt = {"name": "mq", "type": "mqtt", "url": f"mqtt://127.0.0.1:{broker.port}"}
    async with Subscriber(broker.port, ("fleet/event/#",)) as sub:
        rig = await make_rig(extra_targets=(mqtt,))
        device = next(d for d in rig.sim.devices if len(d.cameras) >= 2)
        ticket = await rig.new_event(video=True, media_delay_s=10_000, device_cid=device.device_cid)
        await rig.poll()
        await wait_for(lambda: bool(rig.events("event.created", ticket)), message="event.created")

        rig.sim.set_media(ticket, has_video=True, uploading=False)  # the upload finished
        rig.clock.advance(30)
        await rig.poll()
        await wait_for(lambda: bool(rig.events("event.updated", ticket)), message="event.updated")
        await wait_for(lambda: len(rig.slack.delivered()) == 2, message="slack thread reply")
        await wait_for(lambda: len(sub.messages) == 2, message="both on MQTT")
        await rig.settle()

    (created,) = rig.events("event.created", ticket)
    (updated,) = rig.events("event.updated", ticket)
    assert created["data"]["media"]["videos"] is None  # nothing uploaded yet: no fetch
    data = updated["data"]
    assert data["revision"] == 2
    assert data["changed"] == [
        "media.has_video",
        "media.uploading",
        "media.videos_count",
        "media.videos",
    ]
    videos = data["media"]["videos"]
    assert [v["cam_id"] for v in videos] == list(device.cameras)
    for v in videos:
        assert v["url"].startswith("http://127.0.0.1:")
        assert "signature=" in v["url"]
        assert v["duration_s"] is not None
        assert v["expires_at"].endswith("Z")
    validate_envelope(updated)
    assert rig.calls() == 1
    assert rig.sim.video_detail_calls[ticket] == 1

    # MQTT carries the same envelope, URLs and all.
    payloads = {json.loads(m.payload)["type"]: json.loads(m.payload) for m in sub.messages}
    assert payloads["event.updated"] == updated

    # Slack: the update is a reply in the event's thread, one link per camera by name.
    first, reply = rig.slack.delivered()
    assert "thread_ts" not in first.body
    assert reply.body["thread_ts"] == first.ts
    assert slack_links(reply) == [slack_link(v) for v in videos]
    assert "video links: Front, In-cabin" in reply.body["text"]


async def test_a_failing_fetch_sends_the_alert_and_later_the_links(
    make_rig: Callable[..., Awaitable[VRig]],
) -> None:
    rig = await make_rig()
    with capture_logs() as logs:
        ticket = await rig.new_event(video=True, media_delay_s=0)  # has_video from the start
        rig.sim.failing_video_details.add(ticket)  # the vendor answers 500 for its videos
        await rig.poll()
        await wait_for(lambda: bool(rig.events("event.created", ticket)), message="the alert")
    (created,) = rig.events("event.created", ticket)
    assert created["data"]["media"]["has_video"] is True
    assert created["data"]["media"]["videos"] is None  # not held back by the failure
    # (The poll's head and its re-scan may both have seen the ticket: one try each.)
    failed = rig.metric("bridge_video_link_fetches_total", "failed")
    assert failed == rig.sim.video_detail_calls[ticket] >= 1
    (warning,) = [e for e in logs if e["event"].startswith("video links unavailable")]
    assert warning["ticket"] == ticket
    assert warning["status"] == 500

    # The next re-scan tries again; its success is an update naming only the links.
    rig.sim.failing_video_details.clear()
    rig.clock.advance(30)
    with capture_logs() as logs:
        await rig.poll()
    await wait_for(lambda: bool(rig.events("event.updated", ticket)), message="the links")
    (updated,) = rig.events("event.updated", ticket)
    assert updated["data"]["revision"] == 2
    assert updated["data"]["changed"] == ["media.videos"]
    assert updated["data"]["media"]["videos"]
    assert [e["event"] for e in logs if e["event"].startswith("video links")] == [
        "video links recovered"
    ]
    # Owed no more: later re-scans ask nothing and send nothing.
    for _ in range(3):
        rig.clock.advance(30)
        await rig.poll()
    await rig.settle()
    assert rig.calls() == failed + 1
    assert rig.metric("bridge_video_link_fetches_total", "ok") == 1
    assert len(rig.events("event.updated", ticket)) == 1
    # Slack threads the late links under the alert too.
    first, reply = rig.slack.delivered()
    assert reply.body["thread_ts"] == first.ts
    assert slack_links(reply) == [slack_link(v) for v in updated["data"]["media"]["videos"]]


async def test_one_fetch_per_camera_set_change_and_resigned_urls_are_no_change(
    make_rig: Callable[..., Awaitable[VRig]],
) -> None:
    rig = await make_rig()
    device = next(d for d in rig.sim.devices if len(d.cameras) >= 2)
    ticket = await rig.new_event(video=True, media_delay_s=10_000, device_cid=device.device_cid)
    rig.sim.set_media(ticket, has_video=True, uploading=True, videos_count=1)
    await rig.poll()
    await wait_for(lambda: bool(rig.events("event.created", ticket)))
    (created,) = rig.events("event.created", ticket)
    first_url = created["data"]["media"]["videos"][0]["url"]

    # Re-scans see the same media: no fetch, so no new signature and no update.
    for _ in range(4):
        rig.clock.advance(30)
        await rig.poll()
    assert rig.calls() == 1

    # A change that brings no file (the expiry) is an update, but asks nothing.
    rig.sim.set_media(ticket, videos_count=1, expiry=int(rig.clock.now()) + 86_400)
    rig.clock.advance(30)
    await rig.poll()
    await wait_for(lambda: len(rig.events("event.updated", ticket)) == 1)
    expiry = rig.events("event.updated", ticket)[0]["data"]
    assert expiry["changed"] == ["media.expires_at"]
    assert expiry["media"]["videos"] is None  # not asked: the cameras cannot have changed
    assert rig.calls() == 1

    # The vendor drops the video and lists it again: asked again, the same camera comes
    # back under a newly signed URL, which is no change of `media.videos`.
    rig.sim.set_media(ticket, has_video=False)
    rig.clock.advance(30)
    await rig.poll()
    rig.sim.set_media(ticket, has_video=True, videos_count=1)
    rig.clock.advance(30)
    await rig.poll()
    await wait_for(lambda: len(rig.events("event.updated", ticket)) == 3)
    back = rig.events("event.updated", ticket)[2]["data"]
    assert back["changed"] == ["media.has_video"]
    (video,) = back["media"]["videos"]
    assert video["cam_id"] == device.cameras[0]
    assert video["url"] != first_url  # re-signed by the vendor
    assert rig.calls() == 2

    # A second camera's file arrives: one fetch, one update naming the new set.
    rig.sim.set_media(ticket, uploading=False, videos_count=2)
    rig.clock.advance(30)
    await rig.poll()
    await wait_for(lambda: len(rig.events("event.updated", ticket)) == 4)
    second = rig.events("event.updated", ticket)[3]["data"]
    assert second["revision"] == 5
    assert second["changed"] == ["media.uploading", "media.videos_count", "media.videos"]
    assert [v["cam_id"] for v in second["media"]["videos"]] == list(device.cameras[:2])
    for _ in range(3):
        rig.clock.advance(30)
        await rig.poll()
    await rig.settle()
    # Created, video back, second camera: nothing per poll, nothing for the expiry.
    assert rig.calls() == 3 == rig.sim.video_detail_calls[ticket]
    assert len(rig.hook.envelopes) == 5


async def test_fetches_are_bounded_to_four_at_once_and_counted(
    make_rig: Callable[..., Awaitable[VRig]],
) -> None:
    rig = await make_rig(faults=FaultSpec(slow_s=0.2))
    tickets = [rig.sim.add_event(video=True, media_delay_s=0)["ticket"] for _ in range(10)]
    rig.sim.queue_faults(*["slow"] * 10, path_prefix=VIDEO_DETAIL)  # each held open 0.2 s
    rig.clock.advance(5)
    await rig.poll()
    await wait_for(lambda: len(rig.hook.envelopes) == 10, message="ten alerts")
    assert rig.sim.peak_in_flight[VIDEO_DETAIL] == 4
    assert rig.calls() == 10
    assert rig.metric("bridge_video_link_fetches_total", "ok") == 10
    assert all(e["data"]["media"]["videos"] for e in rig.hook.envelopes)
    assert {e["data"]["ticket"] for e in rig.hook.envelopes} == set(tickets)
    await wait_for(lambda: len(rig.slack.delivered()) == 10, message="ten Slack messages")


async def test_a_slow_fetch_never_holds_the_alert_back(
    make_rig: Callable[..., Awaitable[VRig]],
) -> None:
    # upstream.timeout_s is also the deadline of a batch's fetches, retries included.
    rig = await make_rig(config={"upstream": {"timeout_s": 0.5}}, faults=FaultSpec(timeout_s=30))
    ticket = await rig.new_event(video=True, media_delay_s=0)
    rig.sim.queue_faults("timeout", path_prefix=VIDEO_DETAIL)  # answers after 30 s
    started = time.monotonic()
    await rig.poll()
    elapsed = time.monotonic() - started
    await wait_for(lambda: bool(rig.events("event.created", ticket)), message="the alert")
    assert elapsed < 3  # not 30 s, nor in-call retries: the re-scan retries
    assert rig.events("event.created", ticket)[0]["data"]["media"]["videos"] is None
    assert rig.metric("bridge_video_link_fetches_total", "failed") == 1
    rig.clock.advance(30)
    await rig.poll()
    await wait_for(lambda: bool(rig.events("event.updated", ticket)), message="the links later")


async def test_old_events_cost_no_fetch(make_rig: Callable[..., Awaitable[VRig]]) -> None:
    rig = await make_rig(config={"poll": {"events": {"video_links_max_age_s": 600}}})
    old = rig.sim.add_event(video=True, media_delay_s=0, timestamp=int(rig.clock.now()) - 700)
    rig.clock.advance(5)
    await rig.poll()
    await wait_for(lambda: bool(rig.events("event.created", old["ticket"])))
    assert rig.events("event.created", old["ticket"])[0]["data"]["media"]["videos"] is None
    assert rig.calls() == 0


async def test_video_links_can_be_switched_off(make_rig: Callable[..., Awaitable[VRig]]) -> None:
    off = await make_rig(config={"poll": {"events": {"video_links": False}}})
    ticket = await off.new_event(video=True, media_delay_s=0)
    await off.poll()
    await wait_for(lambda: bool(off.events("event.created", ticket)))
    assert off.calls() == 0


async def test_detail_goes_into_event_created_once_and_is_never_retried(
    make_rig: Callable[..., Awaitable[VRig]],
) -> None:
    rig = await make_rig(config={"poll": {"events": {"detail": True, "video_links": False}}})
    ticket = await rig.new_event(video=True, media_delay_s=10_000)
    await rig.poll()
    await wait_for(lambda: bool(rig.events("event.created", ticket)))
    (record,) = rig.events("event.created", ticket)[0]["data"]["detail"]
    assert record["ticket"] == ticket
    assert record["serial_number"]  # a field only detailV2 has, kept as it came

    rig.sim.queue_faults("result_false", path_prefix=DETAIL)
    failing = await rig.new_event(video=False)
    await rig.poll()
    await wait_for(lambda: bool(rig.events("event.created", failing)))
    assert rig.events("event.created", failing)[0]["data"]["detail"] is None
    assert rig.metric("bridge_event_detail_fetches_total", "failed") == 1

    # Records too large to carry to every target are left out, like a failure.
    # (Many fields: each vendor string is already cut to 4,096 characters where it enters.)
    fields = {f"extra_{i}": "x" * 4000 for i in range(DETAIL_MAX_BYTES // 4000 + 1)}
    huge = await rig.new_event(video=False, **fields)
    await rig.poll()
    await wait_for(lambda: bool(rig.events("event.created", huge)))
    assert rig.events("event.created", huge)[0]["data"]["detail"] is None
    assert rig.metric("bridge_event_detail_fetches_total", "failed") == 2

    rig.sim.set_media(ticket, has_video=True)
    for _ in range(3):
        rig.clock.advance(30)
        await rig.poll()
    await wait_for(lambda: bool(rig.events("event.updated", ticket)))
    await rig.settle()
    assert rig.events("event.updated", ticket)[0]["data"]["detail"] is None
    assert rig.calls(DETAIL) == 3  # one per new ticket; neither re-scans nor updates ask
    for env in rig.hook.envelopes:
        validate_envelope(env)


async def test_a_pushed_video_is_fetched_once_for_push_and_poll_together(
    make_rig: Callable[..., Awaitable[VRig]],
) -> None:
    rig = await make_rig(config=PUSH_CONFIG)
    ticket, body = event_push(rig.rig, "ASSET_UPLOADED", video=True, media_delay_s=0)
    resp = await push(rig.rig, body)
    assert resp.status == 200
    await drained(rig.rig)
    await wait_for(lambda: bool(rig.events("event.created", ticket)), message="pushed event")
    (created,) = rig.events("event.created", ticket)
    assert created["data"]["media"]["videos"]  # the push said "video": fetched at once
    # The poll then sees every media field, the same video: no second fetch, no update.
    for _ in range(3):
        rig.clock.advance(30)
        await rig.poll()
    await rig.settle()
    assert rig.calls() == 1
    assert rig.events("event.updated", ticket) == []
