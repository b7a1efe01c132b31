"""The pure Slack formatter: envelope → Block Kit message (no I/O, no event loop).

Notifications are built the way the pipeline builds them (vendor item → normalize →
build_notification) and validated against the envelope schema first, so the
formatter is tested on real shapes. `block_problems` checks Slack's documented
Block Kit limits; `injection_problems` checks that nothing in mrkdwn can mention or
link anything but the bridge's own links.

Run this file as a script to print the rendered example kept in docs/slack.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from envelope_schema import validate_envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.display import camera_name, fit
from bridge.event_types import EventTypeTable
from bridge.markup import escape_mrkdwn
from bridge.normalize import clip_data, normalize_event, report_data, upload_data
from bridge.notifications import Notification, build_notification
from bridge.slack_format import SlackMessage, format_message
from bridge.slack_format.blocks import BLOCKS_MAX, fit_mrkdwn, link
from bridge.slack_format.events import SEVERITY_MARKERS
from bridge.slack_format.report import sparkline
from bridge.storm import GROUP_TYPE, group_data

TABLE = EventTypeTable({})
DOCS = Path(__file__).resolve().parent.parent / "docs" / "slack.md"
HOSTILE = "<!channel> <http://evil.example|click> <@U123ABC> <#C999> & co"

EVENT_ITEM: dict[str, Any] = {
    "asset_info": {"uploading": False, "has_video": True},
    "car_id": 123,
    "device_cid": "96732f17-b4d1-4b67-97de-3fae29237057",
    "serial_number": "K245A0001234",
    "driver_id": 7,
    "driver_name": "Jane Doe",
    "expired": False,
    "expiry": 1_764_604_800,
    "lat": 25.0471,
    "lng": 121.3741,
    "severity_level": 3,
    "ticket": "4b2afd89-8123-4842-b430-c95fc143b14a",
    "timestamp": 1_764_000_000,
    "trip_id": 456,
    "type": 22,
    "type_name": "Harsh Braking",
    "videos_count": 1,
    "videos_total_count": 2,
}

TASK: dict[str, Any] = {
    "task_id": "task-1",
    "task_state": 2,
    "last_ack_message": {
        "code": None,
        "progress_status": [
            {"camId": "C_F", "state": "Success", "state_number": 2},
            {"camId": "C_I", "state": "Success", "state_number": 2},
        ],
    },
}
CLIP_KW: dict[str, Any] = {
    "serial_number": "K245A0001234",
    "cam_id": "ALL",
    "file_name": "clip-1",
    "target_timestamp": 1_764_000_000,
    "duration_s": 30,
}
VIDEOS = [
    {
        "cam_id": "C_F",
        "url": "https://v.example.com/f.mp4?sig=a&exp=1",
        "expires_at": 1_764_086_400,
    },
    {"cam_id": "C_I", "url": "https://v.example.com/i.mp4", "expires_at": 1_764_086_400},
]
REPORT = {
    "summary": {
        "event_category": [
            {"category": "Sensor Event", "count": 12},
            {"category": "AI(ADAS) Event", "count": 5},
            {"category": "AI(DMS) Event", "count": 3},
            {"category": "Traffic sign", "count": 2},
        ],
        "trip": {
            "total_distance": 1234.5,
            "total_idling": 600,
            "total_time": 86400,
            "total_trips": 9,
        },
    },
    "trend": [
        {
            "trend_type": "Sensor Event",
            "events": [
                {
                    "date": "2025-11-22",
                    "types": [{"type": 22, "count": 4, "type_name": "Harsh Braking"}],
                    "severity": {"lv_1": 2, "lv_2": 1, "lv_3": 1},
                },
                {
                    "date": "2025-11-23",
                    "types": [{"type": 22, "count": 8, "type_name": "Harsh Braking"}],
                    "severity": {"lv_1": 5, "lv_2": 2, "lv_3": 1},
                },
            ],
        },
        {
            "trend_type": "AI(DMS) Event",
            "events": [
                {
                    "date": "2025-11-23",
                    "types": [{"type": 27, "count": 3, "type_name": "Phoning"}],
                    "severity": {"lv_1": 3, "lv_2": 0, "lv_3": 0},
                }
            ],
        },
    ],
}


# --------------------------------------------------------------------------- builders


def envelope(type_: str, data: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """A schema-valid envelope, as the pipeline would store it."""
    n = build_notification(
        type_, data, base_url="https://fleet.example.com", now=1_764_000_003.12, **fixed
    )
    env = n.envelope()
    validate_envelope(env)
    return env


def event_env(
    type_: str = "event.created", revision: int = 1, changed: list[str] | None = None, **item: Any
) -> dict[str, Any]:
    data = normalize_event(EVENT_ITEM | item, TABLE).data | {
        "revision": revision,
        "changed": changed or [],
    }
    return envelope(type_, data)


def clip_env(type_: str, task: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return envelope(type_, clip_data(task or TASK, **(CLIP_KW | kw)))


# --------------------------------------------------------------------------- checkers


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def block_problems(message: SlackMessage | dict[str, Any]) -> list[str]:
    """Everything in `message` that breaks Slack's Block Kit rules or limits."""
    problems = []
    text = message.get("text")
    if not isinstance(text, str) or not text or units(text) > 3000:
        problems.append(f"text: {text!r:.80}")
    blocks = message.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        return [*problems, f"blocks: {len(blocks) if isinstance(blocks, list) else blocks!r}"]

    def check_text(where: str, obj: Any, kind: str, limit: int) -> None:
        if not isinstance(obj, dict) or obj.get("type") != kind:
            problems.append(f"{where}: not {kind}")
            return
        value = obj.get("text")
        if not isinstance(value, str) or not value.strip() or units(value) > limit:
            problems.append(f"{where}: {units(value) if isinstance(value, str) else value!r} units")

    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "header":
            check_text(f"blocks[{i}].text", block.get("text"), "plain_text", 150)
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                problems.append(f"blocks[{i}]: section without text or fields")
            if "text" in block:
                check_text(f"blocks[{i}].text", block["text"], "mrkdwn", 3000)
            fields = block.get("fields", [])
            if len(fields) > 10:
                problems.append(f"blocks[{i}]: {len(fields)} fields")
            for j, f in enumerate(fields):
                check_text(f"blocks[{i}].fields[{j}]", f, "mrkdwn", 2000)
        elif kind == "context":
            elements = block.get("elements", [])
            if not 1 <= len(elements) <= 10:
                problems.append(f"blocks[{i}]: {len(elements)} context elements")
            for j, e in enumerate(elements):
                check_text(f"blocks[{i}].elements[{j}]", e, "mrkdwn", 3000)
        else:
            problems.append(f"blocks[{i}]: unexpected type {kind!r}")
    return problems


def mrkdwn_texts(message: SlackMessage | dict[str, Any]) -> list[str]:
    """Every string Slack parses as mrkdwn: the fallback text, sections, fields, contexts."""
    texts = [message["text"]]
    for block in message["blocks"]:
        if "text" in block and block["text"]["type"] == "mrkdwn":
            texts.append(block["text"]["text"])
        texts += [f["text"] for f in block.get("fields", [])]
        texts += [e["text"] for e in block.get("elements", [])]
    return texts


_ANGLE = re.compile(r"<([^<>]*)>?")


def injection_problems(message: SlackMessage | dict[str, Any]) -> list[str]:
    """Any `<…>` in mrkdwn that is not one of the bridge's own http(s) links."""
    problems = []
    for text in mrkdwn_texts(message):
        for match in _ANGLE.finditer(text):
            inner = match.group(1)
            if not re.match(r"https?://[^|\s]+\|[^|]", inner) or not match.group(0).endswith(">"):
                problems.append(match.group(0)[:80])
    return problems


def field(message: SlackMessage, label: str) -> str:
    """The value of the field called `label` (first match)."""
    for block in message["blocks"]:
        for f in block.get("fields", []):
            title, _, value = f["text"].partition("\n")
            if title == f"*{label}*":
                return str(value)
    raise AssertionError(f"no field {label!r}")


def header_text(message: SlackMessage) -> str:
    first = message["blocks"][0]
    assert first["type"] == "header"
    return str(first["text"]["text"])


def all_text(message: SlackMessage) -> str:
    return json.dumps(message, ensure_ascii=False)


# --------------------------------------------------------------------------- events


@pytest.mark.parametrize(
    ("level", "severity"), [(3, "severe"), (2, "moderate"), (1, "minor"), (None, "unknown")]
)
def test_header_has_the_severity_marker_and_event_name(level: int | None, severity: str) -> None:
    msg = format_message(event_env(severity_level=level))
    assert header_text(msg) == f"{SEVERITY_MARKERS[severity]} Harsh Braking"
    assert field(msg, "Severity").startswith(SEVERITY_MARKERS[severity])
    assert block_problems(msg) == []


def test_event_fields_give_vehicle_driver_device_time_location_media() -> None:
    msg = format_message(event_env(), tz="Asia/Taipei")
    assert field(msg, "Vehicle") == "123"
    assert field(msg, "Driver") == "Jane Doe (#7)"
    assert field(msg, "Device") == "K245A0001234"
    assert field(msg, "Time") == "2025-11-25 00:00:00 CST"
    assert (
        field(msg, "Location")
        == "<https://www.google.com/maps?q=25.0471,121.3741|25.0471, 121.3741>"
    )
    assert (
        field(msg, "Media") == "🎥 Video available (1 of 2 clips)\nexpires 2025-12-02 00:00:00 CST"
    )
    assert field(msg, "Trip") == "456"
    context = [e["text"] for e in msg["blocks"][-1]["elements"]]
    assert "Ticket 4b2afd89-8123-4842-b430-c95fc143b14a" in context
    assert "event.created" in context
    assert block_problems(msg) == []


@pytest.mark.parametrize(
    ("tz", "shown"),
    [
        ("UTC", "2025-11-24 16:00:00 UTC"),
        ("America/New_York", "2025-11-24 11:00:00 EST"),
        ("Europe/Berlin", "2025-11-24 17:00:00 CET"),
        ("America/Sao_Paulo", "2025-11-24 13:00:00 UTC-03:00"),  # tzdata has no abbreviation
        ("No/Such_Zone", "2025-11-24 16:00:00 UTC"),  # never fails
    ],
)
def test_time_is_shown_in_the_target_zone(tz: str, shown: str) -> None:
    assert field(format_message(event_env(), tz=tz), "Time") == shown


def test_device_falls_back_to_the_cid() -> None:
    msg = format_message(event_env(serial_number=None))
    assert field(msg, "Device") == "96732f17-b4d1-4b67-97de-3fae29237057"


@pytest.mark.parametrize(
    ("item", "shown"),
    [
        ({}, "🎥 Video available (1 of 2 clips)"),
        ({"asset_info": {"has_video": False, "uploading": True}}, "⏫ Uploading (1 of 2 clips)"),
        (
            {"asset_info": {"has_video": True, "uploading": True}},
            "🎥 Video available, more uploading",
        ),
        (
            {"asset_info": {"has_video": False, "uploading": False}, "videos_count": 0},
            "No video (0 of 2 clips)",
        ),
        ({"expired": True}, "⌛ Video expired (1 of 2 clips)"),
    ],
)
def test_media_state_in_words(item: dict[str, Any], shown: str) -> None:
    assert field(format_message(event_env(**item)), "Media").startswith(shown)


def test_missing_location_and_media_are_shown_as_such() -> None:
    data = {"ticket": "t-1", "timestamp": 1_700_000_000}
    env = envelope(
        "event.created", normalize_event(data, TABLE).data | {"revision": 1, "changed": []}
    )
    msg = format_message(env)
    assert header_text(msg) == "⚪ Unknown"
    assert field(msg, "Location") == "—"
    assert field(msg, "Media") == "Unknown"
    assert field(msg, "Driver") == "—"
    assert "location unknown" in msg["text"]
    assert block_problems(msg) == []


def test_fallback_text_carries_the_same_facts() -> None:
    msg = format_message(event_env(), tz="Asia/Taipei")
    text = msg["text"]
    assert text.startswith("🔴 Severe: Harsh Braking")
    for fact in (
        "vehicle 123",
        "driver Jane Doe",
        "device K245A0001234",
        "2025-11-25 00:00:00 CST",
        "25.0471, 121.3741",
    ):
        assert fact in text


def test_event_updated_says_what_changed() -> None:
    env = event_env(
        "event.updated",
        revision=2,
        changed=["media.has_video", "media.videos_count", "media.uploading"],
        asset_info={"has_video": True, "uploading": False},
        videos_count=2,
    )
    msg = format_message(env)
    assert header_text(msg) == "🔴 Harsh Braking · update"
    changed = msg["blocks"][1]["text"]["text"]
    assert changed == "*What changed:* video now available; clips: 2 of 2 clips; upload finished"
    assert "Update on Severe Harsh Braking: video now available" in msg["text"]
    assert "revision 2" in [e["text"] for e in msg["blocks"][-1]["elements"]]
    assert block_problems(msg) == []


EVENT_VIDEOS: list[dict[str, Any]] = [
    {
        "cam_id": "C_F",
        "url": "https://media.example.com/t/C_F.mp4?expires=1764086400&signature=ab12",
        "duration_s": 30,
        "expires_at": "2025-11-25T16:00:00Z",
    },
    {
        "cam_id": "C_I",
        "url": "https://media.example.com/t/C_I.mp4?expires=1764086400&signature=cd34",
        "duration_s": 30,
        "expires_at": "2025-11-25T16:00:00Z",
    },
]


def video_update_env(videos: list[dict[str, Any]], **fixed: Any) -> dict[str, Any]:
    """The thread reply for a video: an event.updated whose links were fetched."""
    data = normalize_event(EVENT_ITEM | {"videos_count": 2}, TABLE).data
    data |= {"revision": 2, "changed": ["media.has_video", "media.videos"]}
    data["media"]["videos"] = videos
    return envelope("event.updated", data, **fixed)


def test_video_links_name_each_camera_in_the_thread_reply() -> None:
    msg = format_message(video_update_env(EVENT_VIDEOS), tz="Asia/Taipei")
    changed = msg["blocks"][1]["text"]["text"]
    assert changed == "*What changed:* video now available; video links: Front, In-cabin"
    videos = next(t for t in mrkdwn_texts(msg) if t.startswith("*Videos*"))
    assert videos.splitlines() == [
        "*Videos*",
        "• <https://media.example.com/t/C_F.mp4?expires=1764086400&amp;signature=ab12|Front>"
        " (30 s, expires 2025-11-26 00:00:00 CST)",
        "• <https://media.example.com/t/C_I.mp4?expires=1764086400&amp;signature=cd34|In-cabin>"
        " (30 s, expires 2025-11-26 00:00:00 CST)",
    ]
    assert (
        "Update on Severe Harsh Braking: video now available; video links: Front, In-cabin"
        in (msg["text"])
    )
    assert block_problems(msg) == []
    assert injection_problems(msg) == []


def test_event_created_with_videos_links_them_too() -> None:
    env = event_env()
    env["data"]["media"]["videos"] = EVENT_VIDEOS[:1]
    validate_envelope(env)
    msg = format_message(env)
    assert "signature=ab12|Front>" in "\n".join(mrkdwn_texts(msg))
    assert msg["text"].endswith(", 1 video (Front)")


@pytest.mark.parametrize(
    ("cam_id", "name"),
    [
        ("C_F", "Front"),
        ("C_I", "In-cabin"),
        ("C_R", "Rear"),
        ("C_E", "Extended (TVI)"),
        ("GRID", "Grid (combined)"),
        ("S_F_I", "Front + in-cabin"),
        ("c_f", "Front"),
        ("C_Z", "Camera C_Z"),
        (None, "Video"),
    ],
)
def test_camera_names(cam_id: str | None, name: str) -> None:
    assert camera_name(cam_id) == name


def test_only_http_video_urls_become_links_and_vendor_text_stays_inert() -> None:
    videos = [
        {"cam_id": HOSTILE, "url": "https://media.example.com/x|<!channel>", "duration_s": None,
         "expires_at": None},
        {"cam_id": "C_R", "url": "javascript:alert(1)", "duration_s": 5, "expires_at": None},
        {"cam_id": "C_E", "url": "ftp://media.example.com/e.mp4", "duration_s": 5,
         "expires_at": None},
    ]  # fmt: skip
    msg = format_message(video_update_env(videos))
    texts = "\n".join(mrkdwn_texts(msg))
    assert injection_problems(msg) == []
    assert "<https://media.example.com/x%7C%3C!channel%3E|Camera &lt;!channel&gt;" in texts
    assert "javascript" not in texts
    assert "ftp://" not in texts
    assert "2 videos without a usable link" in texts
    assert "video links: Camera &lt;!channel&gt;" in texts


def test_many_cameras_are_named_once_each_and_the_rest_counted() -> None:
    videos = [
        {"cam_id": f"X{i % 12}", "url": f"https://m.example.com/{i}", "duration_s": None,
         "expires_at": None}
        for i in range(30)
    ]  # fmt: skip
    msg = format_message(video_update_env(videos))
    changed = msg["blocks"][1]["text"]["text"]
    assert changed.endswith("Camera X6, Camera X7 and 4 more")
    assert changed.count("Camera X0") == 1
    assert block_problems(msg) == []


def test_redacted_fields_render_as_missing() -> None:
    env = event_env()
    del env["data"]["driver"]["name"]
    del env["data"]["location"]
    msg = format_message(env)
    assert field(msg, "Driver") == "#7"
    assert field(msg, "Location") == "—"
    assert "Jane" not in all_text(msg)


# --------------------------------------------------------------------------- clips, uploads


def test_clip_completed_shows_task_state_cameras_and_video_links() -> None:
    msg = format_message(clip_env("clip.completed", videos=VIDEOS, ticket="tk-1"))
    assert header_text(msg) == "✅ Clip ready · K245A0001234"
    assert field(msg, "Task") == "task-1"
    assert field(msg, "State") == "success (2)"
    assert field(msg, "Camera") == "ALL"
    assert field(msg, "Ticket") == "tk-1"
    texts = "\n".join(mrkdwn_texts(msg))
    assert "• C_F: Success (state 2)" in texts
    assert "<https://v.example.com/f.mp4?sig=a&amp;exp=1|Front>" in texts
    assert "<https://v.example.com/i.mp4|In-cabin>" in texts
    assert (
        msg["text"]
        == "✅ Clip ready: task task-1, device K245A0001234, state success (2), 2 videos"
    )
    assert block_problems(msg) == []
    assert injection_problems(msg) == []


def test_clip_failed_shows_the_camera_error() -> None:
    task = TASK | {"task_state": 3, "last_ack_message": {"code": "D_E20003"}}
    msg = format_message(clip_env("clip.failed", task))
    assert header_text(msg) == "❌ Clip failed · K245A0001234"
    assert "*Error:* D_E20003 — Clip process is busy" in mrkdwn_texts(msg)
    assert "error D_E20003 — Clip process is busy" in msg["text"]


def test_clip_requested_and_partial_success() -> None:
    requested = format_message(clip_env("clip.requested", {"task_id": "t-9"}))
    assert header_text(requested) == "🎬 Clip requested · K245A0001234"
    assert field(requested, "State") == "upcoming (0)"
    partial = format_message(clip_env("clip.completed", TASK | {"task_state": 6}))
    assert header_text(partial).startswith("⚠️ Clip partly ready")
    assert field(partial, "State") == "partial success (6)"


def test_upload_updated() -> None:
    item = {
        "task_id": "up-1",
        "task_state": 5,
        "device_cid": "cid-1",
        "event_name": "Manual upload",
        "left_days": 12,
        "lat": 25.1,
        "lng": 121.2,
        "ticket": "tk-1",
    }
    msg = format_message(envelope("upload.updated", upload_data(item)))
    assert header_text(msg) == "⏫ Upload: Manual upload"
    assert field(msg, "State") == "uploading (5)"
    assert field(msg, "Device") == "cid-1"
    assert field(msg, "Kept") == "12 days left"
    assert field(msg, "Location") == "<https://www.google.com/maps?q=25.1,121.2|25.1, 121.2>"
    assert msg["text"].startswith("⏫ Upload of Manual upload: task up-1")
    assert block_problems(msg) == []


# --------------------------------------------------------------------------- report, test


def test_report_is_a_readable_digest() -> None:
    data = report_data(
        REPORT, since=1_763_827_200, until=1_763_913_600, tz="Asia/Taipei", table=TABLE
    )
    msg = format_message(envelope("report.safety", data), tz="UTC")
    assert header_text(msg) == "📊 Safety report"
    texts = mrkdwn_texts(msg)
    # The period is shown in the report's own zone: a Taipei day.
    assert "*Period:* 2025-11-23 00:00:00 CST → 2025-11-24 00:00:00 CST" in texts
    assert field(msg, "Total events") == "22"
    assert field(msg, "Sensor") == "12"
    assert field(msg, "ADAS") == "5"
    assert field(msg, "Traffic sign") == "2"
    assert field(msg, "Other") == "0"
    assert field(msg, "Trips") == "9"
    assert field(msg, "Distance") == "1,234.5"
    assert "*By severity:* 🔴 Severe 2 · 🟠 Moderate 3 · 🟡 Minor 10" in texts
    assert "*Most frequent:* Harsh Braking 12 · Phoning 3" in texts
    trend = next(t for t in texts if t.startswith("*Trend"))
    assert trend.splitlines() == [
        "*Trend ▃█*",
        "`2025-11-22` 4 — 🔴 Severe 1 · 🟠 Moderate 1 · 🟡 Minor 2",
        "`2025-11-23` 11 — 🔴 Severe 1 · 🟠 Moderate 2 · 🟡 Minor 8",
    ]
    assert msg["text"].startswith(
        "📊 Safety report 2025-11-23 00:00:00 CST → 2025-11-24 00:00:00 CST: 22 events"
    )
    assert "Sensor 12" in msg["text"]
    assert block_problems(msg) == []


def test_bridge_test_and_unknown_types() -> None:
    msg = format_message(envelope("bridge.test", {"target": "alerts", "message": "hello"}))
    assert header_text(msg) == "✅ fleet-bridge test"
    assert msg["blocks"][1]["text"]["text"] == "Test message for target *alerts*: hello"
    assert msg["text"] == "✅ fleet-bridge test message for target alerts"
    other = format_message({"type": "<!here>", "data": None})
    assert block_problems(other) == []
    assert injection_problems(other) == []
    assert block_problems(format_message({})) == []


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([1, 4, 8]) == "▁▄█"


# --------------------------------------------------------------------------- escaping


def test_hostile_driver_name_is_inert_in_blocks_and_text() -> None:
    msg = format_message(event_env(driver_name=HOSTILE, lat=None))
    dumped = all_text(msg)
    assert "<!channel>" not in dumped
    assert "<http" not in dumped
    assert "<@U" not in dumped
    assert "<#C" not in dumped
    escaped = (
        "&lt;!channel&gt; &lt;http://evil.example|click&gt; &lt;@U123ABC&gt; &lt;#C999&gt; &amp; co"
    )
    assert field(msg, "Driver") == f"{escaped} (#7)"
    assert f"driver {escaped}" in msg["text"]
    assert injection_problems(msg) == []


def test_hostile_strings_everywhere_stay_inert() -> None:
    env = event_env(
        "event.updated",
        revision=2,
        changed=["media.has_video"],
        driver_name=HOSTILE,
        type_name=HOSTILE,
        device_cid=HOSTILE,
        serial_number=HOSTILE,
        ticket=HOSTILE,
        ticket_linked=HOSTILE,
    )
    env["data"]["changed"].append(HOSTILE)  # not schema-valid, but a receiver may see it
    msg = format_message(env)
    assert injection_problems(msg) == []
    # The header is plain_text: Slack never parses it, so it shows the name as sent.
    assert header_text(msg).startswith("🔴 <!channel>")
    clip = clip_data(
        TASK
        | {"task_id": HOSTILE, "last_ack_message": {"code": "D_E1<!channel>", "desc": HOSTILE}},
        **(CLIP_KW | {"serial_number": HOSTILE, "file_name": HOSTILE, "cam_id": HOSTILE}),
        videos=[{"cam_id": HOSTILE, "url": "https://v.example.com/x"}],
        ticket=HOSTILE,
    )
    clip_msg = format_message({"type": "clip.failed", "data": clip})
    assert injection_problems(clip_msg) == []
    assert "&lt;!channel&gt;" in all_text(clip_msg)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://v.example.com/a.mp4?x=1&y=2", "<https://v.example.com/a.mp4?x=1&amp;y=2|Video>"),
        ("https://v.example.com/a|<!channel>", "<https://v.example.com/a%7C%3C!channel%3E|Video>"),
        ("https://v.example.com/a>b", "<https://v.example.com/a%3Eb|Video>"),
        ("javascript:alert(1)", None),
        ("ftp://v.example.com/a", None),
        ("https://v.example.com/a b", None),
        ("https://v.example.com/a\n<!channel>", None),
        ("/relative/path", None),
        ("https://" + "a" * 3000 + ".example", None),
        (12, None),
    ],
)
def test_links_are_http_only_and_cannot_be_broken_out_of(url: Any, expected: str | None) -> None:
    assert link(url, "Video") == expected


def test_escape_mrkdwn() -> None:
    assert escape_mrkdwn("a & <b> &amp;") == "a &amp; &lt;b&gt; &amp;amp;"


# --------------------------------------------------------------------------- limits


def test_fit_counts_utf16_units_and_marks_the_cut() -> None:
    assert fit("abc", 3) == "abc"
    assert fit("abcd", 3) == "ab…"
    emoji = "😀" * 100  # 200 UTF-16 units
    assert units(fit(emoji, 150)) <= 150
    assert fit(emoji, 150).endswith("…")


def test_fit_mrkdwn_never_cuts_inside_a_link_or_an_entity() -> None:
    text = "see <https://example.com/very/long/path|the video> now"
    assert fit_mrkdwn(text, 20) == "see …"
    assert fit_mrkdwn("a &amp; b", 5) == "a …"
    assert fit_mrkdwn("a &amp; b", 8) == "a &amp;…"


def test_absurd_vendor_strings_and_counts_respect_every_limit() -> None:
    huge = "Ж" * 20_000
    emoji = "🚚" * 5_000
    env = event_env(type_name=emoji, driver_name=huge, serial_number=huge, ticket=huge)
    msg = format_message(env)
    assert block_problems(msg) == []
    assert header_text(msg).endswith("…")
    assert units(header_text(msg)) <= 150

    videos = [{"cam_id": f"C{i}", "url": "https://v.example.com/" + "x" * 1900} for i in range(500)]
    task = TASK | {
        "last_ack_message": {
            "code": "D_E20007",
            "desc": huge,
            "progress_status": [
                {"camId": huge, "state": huge, "state_number": i} for i in range(1000)
            ],
        }
    }
    clip = format_message(clip_env("clip.completed", task, file_name=huge, videos=videos))
    assert block_problems(clip) == []
    assert injection_problems(clip) == []
    assert any("more" in t for t in mrkdwn_texts(clip))  # what does not fit is counted

    long_name = "Ж" * 500
    days = [
        {
            "date": f"2025-{i:05d}",
            "types": [{"type": i, "count": i, "type_name": long_name}],
            "severity": {"lv_3": i},
        }
        for i in range(120)
    ]
    report = REPORT | {"trend": [{"trend_type": long_name, "events": days}] * 20}
    data = report_data(report, since=0, until=86_400, tz="UTC", table=TABLE)
    assert block_problems(format_message(envelope("report.safety", data))) == []


# Any JSON-like value, including hostile and huge strings, in any field.
_strings = st.one_of(
    st.text(max_size=300), st.sampled_from([HOSTILE, "&", "<", ">", "|", "x" * 5000])
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _strings,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(_strings, children, max_size=6)
    ),
    max_leaves=40,
)
_data = st.fixed_dictionaries(
    {},
    optional={
        key: _json
        for key in (
            "ticket",
            "severity",
            "event_type",
            "driver",
            "vehicle",
            "device",
            "location",
            "media",
            "changed",
            "occurred_at",
            "videos",
            "cameras",
            "error",
            "state",
            "state_code",
            "task_id",
            "trend",
            "categories",
            "trips",
            "since",
            "tz",
            "target",
        )
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    type_=st.sampled_from(
        [
            "event.created",
            "event.updated",
            "clip.completed",
            "upload.updated",
            "report.safety",
            "event.group",
            "bridge.test",
            "x",
        ]
    ),
    data=_data,
    tz=st.sampled_from(["UTC", "Asia/Taipei", "bogus", None]),
)
def test_any_data_formats_within_limits_and_stays_inert(
    type_: str, data: dict[str, Any], tz: str | None
) -> None:
    msg = format_message({"type": type_, "id": HOSTILE, "data": data}, tz=tz)
    assert block_problems(msg) == []
    assert injection_problems(msg) == []
    json.dumps(msg)  # serializable as is


# --------------------------------------------------------------------------- event.group


def member(i: int, **item: Any) -> Notification:
    """The i-th event of vehicle 123, one minute apart, as the pipeline builds it."""
    fields = {"ticket": f"t-{i}", "timestamp": 1_764_000_000 + 60 * i} | item
    data = normalize_event(EVENT_ITEM | fields, TABLE).data | {"revision": 1, "changed": []}
    return build_notification(
        "event.created", data, base_url="https://fleet.example.com", now=1_764_000_003.0 + 60 * i
    )


def group_env(
    members: list[Notification], reason: str = "grouped", max_items: int = 20, **fixed: Any
) -> dict[str, Any]:
    data = group_data(reason, {"vehicle.id": 123}, members, max_items)
    return envelope(GROUP_TYPE, data, **fixed)


def test_group_header_gives_count_key_and_worst_severity() -> None:
    members = [member(i, severity_level=1) for i in range(6)] + [member(6, severity_level=2)]
    msg = format_message(group_env(members))
    assert header_text(msg) == f"{SEVERITY_MARKERS['moderate']} 7 events — vehicle 123"
    assert msg["text"].startswith(f"{SEVERITY_MARKERS['moderate']} 7 events — vehicle 123")
    assert "notification of type" not in all_text(msg)
    assert block_problems(msg) == []


def test_group_lists_each_member_in_the_target_zone() -> None:
    members = [member(0), member(1, driver_name="Bob Roe", driver_id=8, severity_level=1)]
    msg = format_message(group_env(members), tz="Asia/Taipei")
    dumped = all_text(msg)
    assert "2025-11-25 00:00:00 CST · *Harsh Braking* · Severe · driver Jane Doe (#7)" in dumped
    assert "2025-11-25 00:01:00 CST · *Harsh Braking* · Minor · driver Bob Roe (#8)" in dumped
    assert "2025-11-25 00:01:00 CST Harsh Braking (Minor, driver Bob Roe (#8))" in msg["text"]
    assert "more" not in dumped
    assert "quiet hours" not in dumped


def test_group_says_how_many_more_than_it_carries() -> None:
    msg = format_message(group_env([member(i) for i in range(9)], max_items=3))
    assert header_text(msg).endswith("9 events — vehicle 123")
    assert all_text(msg).count("Harsh Braking* ·") == 3
    assert "…and 6 more" in all_text(msg)
    assert msg["text"].endswith("; and 6 more")


def test_muted_group_says_it_was_held_during_quiet_hours() -> None:
    msg = format_message(group_env([member(0), member(1)], reason="muted"))
    assert "Held during quiet hours" in all_text(msg)
    assert "(held during quiet hours)" in msg["text"]


def test_group_keeps_a_hostile_driver_name_inert() -> None:
    msg = format_message(group_env([member(0, driver_name=HOSTILE), member(1)]))
    dumped = all_text(msg)
    assert "<!channel>" not in dumped
    assert "<http" not in dumped
    assert "driver &lt;!channel&gt;" in dumped
    assert "driver &lt;!channel&gt;" in msg["text"]
    assert injection_problems(msg) == []


def test_group_with_max_items_of_huge_members_respects_every_limit() -> None:
    huge = "W" * 5000
    members = [member(i, driver_name=huge, type_name=huge) for i in range(120)]
    msg = format_message(group_env(members, max_items=100), tz="Asia/Taipei")
    assert block_problems(msg) == []
    assert len(msg["blocks"]) <= BLOCKS_MAX
    more = re.search(r"…and (\d+) more", all_text(msg))
    assert more is not None
    assert int(more.group(1)) >= 20  # the 20 not carried, and what did not fit
    assert re.search(r"; and \d+ more$", msg["text"])


# --------------------------------------------------------------------------- the docs example


def doc_example() -> tuple[dict[str, Any], SlackMessage]:
    """The event.created shown in docs/slack.md and its rendering (target tz Asia/Taipei)."""
    data = normalize_event(EVENT_ITEM, TABLE).data | {"revision": 1, "changed": []}
    env = envelope("event.created", data, notification_id="ntf_01KAVA2ZD8YV5T3Q9M0XW4R7NB")
    return env, format_message(env, tz="Asia/Taipei")


def doc_video_example() -> SlackMessage:
    """The thread reply shown in docs/slack.md: the event's video links arrived."""
    env = video_update_env(EVENT_VIDEOS, notification_id="ntf_01KAVA3Q2C7V4M8E5N1R6T9W0B")
    return format_message(env, tz="Asia/Taipei")


def doc_group_example() -> SlackMessage:
    """The event.group shown in docs/slack.md: seven events of vehicle 123, five carried."""
    levels = [1, 1, 3, 1, 2, 1, 1]
    members = [member(i, severity_level=level) for i, level in enumerate(levels)]
    members[3] = member(
        3, severity_level=3, driver_name="Bob Roe", driver_id=8, type_name="Tailgating"
    )
    env = group_env(members, max_items=5, notification_id="ntf_01KAVA6R8N3D5F7H9K2M4P6Q8S")
    return format_message(env, tz="Asia/Taipei")


def render_doc_example() -> str:
    """The markdown pasted into docs/slack.md under "Rendered example"."""
    env, msg = doc_example()
    reply = doc_video_example()
    group = doc_group_example()
    return (
        "Notification (`event.created`):\n\n```json\n"
        + json.dumps(env, indent=2, ensure_ascii=False)
        + "\n```\n\nFallback `text`:\n\n```text\n"
        + msg["text"]
        + "\n```\n\n`blocks`:\n\n```json\n"
        + json.dumps(msg["blocks"], indent=2, ensure_ascii=False)
        + "\n```\n\nThe thread reply when its video links arrive (`event.updated`, `changed:"
        + ' ["media.has_video", "media.videos"]`), fallback `text`:\n\n```text\n'
        + reply["text"]
        + "\n```\n\n`blocks`:\n\n```json\n"
        + json.dumps(reply["blocks"], indent=2, ensure_ascii=False)
        + "\n```\n\nAn `event.group` of seven events for vehicle 123 (`group.by: [vehicle.id]`,"
        + " `max_items: 5`), fallback `text`:\n\n```text\n"
        + group["text"]
        + "\n```\n\n`blocks`:\n\n```json\n"
        + json.dumps(group["blocks"], indent=2, ensure_ascii=False)
        + "\n```\n"
    )


def test_docs_show_what_the_formatter_renders() -> None:
    assert render_doc_example() in DOCS.read_text(encoding="utf-8"), (
        "docs/slack.md is stale: paste the output of `python tests/test_slack_format.py`"
    )
    _, msg = doc_example()
    assert block_problems(msg) == []
    assert block_problems(doc_video_example()) == []
    assert block_problems(doc_group_example()) == []


if __name__ == "__main__":
    print(render_doc_example(), end="")
