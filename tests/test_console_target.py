"""The console target: one flushed JSON line per notification."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from bridge.notifications import build_notification
from bridge.settings import ConsoleTarget
from bridge.store.base import Delivery
from bridge.targets.base import SendResult
from bridge.targets.console import ConsoleSender


def _delivery(i: int, data: dict[str, Any]) -> tuple[Delivery, dict[str, Any], str]:
    n = build_notification(
        "event.created", data, base_url="https://fleet.example.com", now=1_764_000_000.0 + i
    )
    delivery = Delivery(
        id=i,
        notification_id=n.id,
        type=n.type,
        target="stdout",
        body=n.body,
        attempts=0,
        created_at=n.created_at,
    )
    return delivery, n.envelope(), n.body


CFG = ConsoleTarget(name="stdout", type="console")


async def test_one_json_line_per_notification() -> None:
    stream = io.StringIO()
    sender = ConsoleSender(CFG, stream)
    assert sender.name == "stdout"
    await sender.start()
    items = [
        _delivery(1, {"ticket": "a", "driver": {"name": "Zoë Müller"}}),
        _delivery(2, {"ticket": "b", "note": "line one\nline two"}),
        _delivery(3, {"ticket": "c", "place": "東京"}),
    ]
    for delivery, envelope, body in items:
        assert await sender.send(delivery, envelope, body) == SendResult.success()
    await sender.close()
    lines = stream.getvalue().split("\n")
    assert lines[-1] == ""  # every line is terminated
    assert lines[:-1] == [body for _, _, body in items]  # the body, byte for byte
    for line, (_, envelope, _) in zip(lines[:-1], items, strict=True):
        assert json.loads(line) == envelope


async def test_a_body_with_raw_line_breaks_still_makes_one_line() -> None:
    stream = io.StringIO()
    sender = ConsoleSender(CFG, stream)
    delivery, envelope, _ = _delivery(1, {"ticket": "a"})
    pretty = json.dumps(envelope, indent=2)
    result = await sender.send(delivery, envelope, pretty)
    assert result.ok
    assert stream.getvalue().count("\n") == 1
    assert json.loads(stream.getvalue()) == envelope


async def test_defaults_to_the_current_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    sender = ConsoleSender(CFG)
    delivery, envelope, body = _delivery(1, {"ticket": "a"})
    assert (await sender.send(delivery, envelope, body)).ok
    assert capsys.readouterr().out == body + "\n"


async def test_a_stream_that_cannot_encode_gets_escaped_json() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    sender = ConsoleSender(CFG, stream)
    delivery, envelope, body = _delivery(1, {"place": "東京"})
    assert (await sender.send(delivery, envelope, body)).ok
    out = raw.getvalue().decode("ascii")
    assert out.endswith("\n")
    assert out.count("\n") == 1
    assert json.loads(out) == envelope


async def test_a_closed_stream_is_a_retryable_failure_not_an_exception() -> None:
    stream = io.StringIO()
    stream.close()
    sender = ConsoleSender(CFG, stream)
    delivery, envelope, body = _delivery(1, {"ticket": "a"})
    result = await sender.send(delivery, envelope, body)
    assert not result.ok
    assert result.retryable
    assert result.error == "console write failed: ValueError"
    await sender.close()  # does not raise either
