"""Whatever valid JSON the vendor sends, nothing escapes: every item and push body goes
from the wire through the boundary (`parse_reply`, `parse_push`), normalize and a real
SQLite store to every target's formatter — webhook body and signature (standard,
CloudEvents structured and binary, each template preset), Slack Block Kit, MQTT topic
and payload, console line — without an exception.

Strings are drawn from all of Unicode *including lone surrogates*, control, bidi and
noncharacters, and some are longer than the 4 KiB bound.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.clock import FakeClock
from bridge.event_types import EventTypeTable
from bridge.formats import BodyFormat
from bridge.formats.cloudevents import CloudEventsFormat
from bridge.formats.template import TemplateFormat, preset_source
from bridge.ingest import EventIngestor
from bridge.metrics import Metrics
from bridge.mqtt_topics import payload_bytes, topic_problem
from bridge.normalize import (
    clip_data,
    normalize_event,
    normalize_push_event,
    report_data,
    upload_data,
)
from bridge.notifications import Notification, build_notification
from bridge.push import PushRejected, parse_push
from bridge.settings import ConsoleTarget, MqttTarget, Settings, settings_from_dict
from bridge.slack_format import format_message
from bridge.store.base import Delivery, NewNotification
from bridge.store.sqlite import SqliteStore
from bridge.targets.console import ConsoleSender
from bridge.targets.mqtt import MqttSender
from bridge.targets.webhook import sign
from bridge.upstream.envelope import parse_reply

TOPIC = "{prefix}/{type}/{type_path}/{device_cid}/{event_type}/{severity}/{ticket}"
SPECIAL = "\x00\x01\n\r\t\x1b\x7f\x85\x9f\u200e\u202e\u2066\u2069\ufdd0\ufeff\ufffe\uffff"

chars = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),  # lone surrogates: valid as JSON escapes
    st.sampled_from(SPECIAL),
)
texts = st.one_of(
    st.text(chars, max_size=12),
    st.builds(lambda c, n: c * n, st.text(chars, min_size=1, max_size=2), st.integers(4090, 4200)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),  # NaN and ±Infinity too: json.loads accepts them
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def near(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values, sometimes anything at all."""
    return st.one_of(strategy, values)


tickets = near(st.one_of(st.uuids().map(str), texts))
timestamps = near(st.integers(1_700_000_000, 1_800_000_000))
codes = near(st.integers(0, 40))
event_items = st.fixed_dictionaries(
    {"ticket": tickets, "timestamp": timestamps},
    optional={
        "type": codes,
        "type_name": texts,
        "name": texts,
        "severity_level": near(st.sampled_from([1, 2, 3, "Minor", "Severe"])),
        "device_cid": texts,
        "serial_number": texts,
        "driver_name": texts,
        "driver_id": values,
        "car_id": values,
        "trip_id": values,
        "lat": values,
        "lng": values,
        "ticket_linked": texts,
        "asset_info": near(st.fixed_dictionaries({"has_video": values, "uploading": values})),
        "videos_count": values,
        "videos_total_count": values,
        "expired": values,
        "expiry": values,
        "extra": values,
    },
)
push_messages = st.fixed_dictionaries(
    {"ticket": tickets, "timestamp": timestamps},
    optional={
        "event_type": codes,
        "event_name": texts,
        "device_sn": texts,
        "device_cid": texts,
        "severity_level": values,
        "gps": near(st.fixed_dictionaries({"lat": values, "lng": values})),
        "video": near(st.fixed_dictionaries({"count": values})),
        "task_id": values,
        "detail": values,
    },
)
push_bodies = st.builds(
    lambda hook, message, as_string: {
        "hookName": hook,
        "message": json.dumps(message) if as_string else message,
    },
    st.sampled_from(["EVENT_TRIGGERED", "ASSET_UPLOADED", "TASK_UPDATE", "GPS_UPDATE"]),
    near(push_messages),
    st.booleans(),
)
tasks = near(
    st.fixed_dictionaries(
        {},
        optional={
            "task_id": values,
            "task_state": near(st.integers(0, 6)),
            "ticket": texts,
            "last_ack_message": values,
            "process_history": values,
            "file_name": texts,
            "serial_number": texts,
            "target_timestamp": values,
        },
    )
)


def wire(value: Any) -> bytes:
    """The vendor's bytes for a value (ASCII JSON: surrogates travel as escapes)."""
    return json.dumps(value).encode()


class Pipeline:
    """A real store and ingestor on one event loop, kept across examples."""

    def __init__(self, tmp: Path) -> None:
        self.runner = asyncio.Runner()
        self.clock = FakeClock()
        self.settings: Settings = settings_from_dict(
            {
                "upstream": {
                    "base_url": "https://fleet.example.com",
                    "api_key": "k" * 16,
                    "auth": {"token": "t" * 16},
                },
                "store": {"url": f"sqlite:///{tmp / 'fuzz.db'}"},
                "targets": [{"name": "out", "type": "console"}],
            },
            {},
        )
        self.store = SqliteStore(tmp / "fuzz.db", self.clock)
        self.runner.run(self.store.open())
        self.ingestor = EventIngestor(self.settings, self.store, self.clock, Metrics())
        self.mqtt = MqttSender(
            MqttTarget.model_validate(
                {"name": "mq", "type": "mqtt", "url": "mqtt://127.0.0.1:1", "topic": TOPIC}
            )
        )
        self.console = ConsoleSender(ConsoleTarget(name="out", type="console"), io.StringIO())
        self.formats: list[BodyFormat] = [
            CloudEventsFormat(mode="structured", type_prefix="com.example."),
            CloudEventsFormat(mode="binary", type_prefix="com.example."),
        ]
        self.formats += [
            TemplateFormat(preset_source(name), target="t", variables={"routing_key": "r" * 32})
            for name in ("pagerduty", "teams", "discord")
        ]

    def close(self) -> None:
        self.runner.run(self.store.close())
        self.runner.close()

    def deliver_everywhere(self, n: Notification) -> None:
        """Every target's formatter, as the dispatcher would call it."""
        body = n.body
        envelope = json.loads(body)
        assert envelope["data"] == json.loads(json.dumps(n.data))
        body.encode("utf-8")  # the webhook's bytes
        sign(["whsec_" + "A" * 32], n.id, 1_764_000_000, body)
        for fmt in self.formats:  # CloudEvents (both modes) and every template preset
            rendered = fmt.render(envelope, body)
            rendered.body.encode("utf-8")
            for name, value in rendered.headers:
                (name + value).encode("latin-1")  # a valid HTTP header
        message = format_message(envelope, tz="Asia/Taipei")
        json.dumps(message).encode("utf-8")  # what goes to Slack
        delivery = Delivery(1, n.id, n.type, "mq", body, 0, 0.0)
        topic = self.mqtt.topic_for(delivery, envelope)
        assert topic_problem(topic) is None, topic
        assert len(topic.split("/")) == len(TOPIC.split("/")) + 1  # type_path is two levels
        assert json.loads(payload_bytes(body)) == envelope
        result = self.runner.run(self.console.send(delivery, envelope, body))
        assert result.ok, result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path_factory.mktemp("fuzz"))
    yield p
    p.close()


FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(items=st.lists(near(event_items), max_size=6))
def test_any_events_page_goes_through_to_every_formatter(
    pipeline: Pipeline, items: list[Any]
) -> None:
    raw = wire({"result": True, "code": "S00000", "data": items, "count": len(items)})
    reply = parse_reply("/V2/events", 200, raw, None)
    page = reply.data
    pipeline.clock.advance(1)
    stats = pipeline.runner.run(pipeline.ingestor.ingest(page, job="events"))
    assert stats.fetched == len(items)
    assert stats.created + stats.updated + stats.duplicates + stats.malformed == len(items)
    for n in stats.notifications:
        pipeline.deliver_everywhere(n)


@FUZZ
@given(bodies=st.lists(near(push_bodies), max_size=6))
def test_any_push_bodies_go_through_to_every_formatter(
    pipeline: Pipeline, bodies: list[Any]
) -> None:
    messages = []
    for body in bodies:
        try:
            hook, message = parse_push(wire(body))
        except PushRejected:
            continue
        if hook in ("EVENT_TRIGGERED", "ASSET_UPLOADED"):
            messages.append(message)
    pipeline.clock.advance(1)
    stats = pipeline.runner.run(
        pipeline.ingestor.ingest(messages, job="push", normalizer=normalize_push_event)
    )
    assert stats.created + stats.updated + stats.duplicates + stats.malformed == len(messages)
    for n in stats.notifications:
        pipeline.deliver_everywhere(n)


@FUZZ
@given(task=tasks, upload=values, report=values)
def test_any_task_upload_and_report_goes_through_to_every_formatter(
    pipeline: Pipeline, task: Any, upload: Any, report: Any
) -> None:
    # Each through the boundary as the client receives it.
    task = parse_reply("/V2/event/taskResult", 200, wire({"data": task}), None).data["data"]
    upload = parse_reply("/V2/event/StorageList", 200, wire({"data": upload}), None).data["data"]
    report = parse_reply("/V2/analytics/safety", 200, wire({"x": report}), None).data["x"]
    table = pipeline.ingestor.table
    datas = [
        (
            "clip.updated",
            clip_data(
                task if isinstance(task, dict) else {},
                serial_number="K245C12345678",
                cam_id="C_F",
                file_name="clip",
                target_timestamp=1_764_000_000,
                duration_s=30,
                videos=task.get("videos") if isinstance(task, dict) else None,
            ),
        ),
        ("upload.updated", upload_data(upload if isinstance(upload, dict) else {})),
        (
            "report.safety",
            report_data(
                report if isinstance(report, dict) else {},
                since=1_764_000_000,
                until=1_764_086_400,
                tz="UTC",
                table=table,
            ),
        ),
    ]
    notes = [
        build_notification(t, d, base_url="https://fleet.example.com", now=pipeline.clock.now())
        for t, d in datas
    ]

    async def store_all() -> None:
        async def work(tx: Any) -> None:
            await tx.add_notifications([NewNotification(n, ["out"]) for n in notes])

        await pipeline.store.ingest(work)

    pipeline.runner.run(store_all())
    for n in notes:
        pipeline.deliver_everywhere(n)


def test_a_normalized_item_is_what_the_store_keeps() -> None:
    """The boundary is the only cleaning: normalize sees clean text and keeps it as is."""
    raw = wire({"data": [{"ticket": "t\ud800\u202e1", "timestamp": 1_764_000_000}]})
    (item,) = parse_reply("/V2/events", 200, raw, None).data["data"]
    ev = normalize_event(item, EventTypeTable())
    assert ev.ticket == "t\ufffd1"
