"""The example notifications of docs/notifications.md: real, valid and in sync with the doc."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from envelope_schema import validate_envelope

from bridge.examples import (
    TYPES,
    build_examples,
    doc_section,
    envelope_json,
    render_markdown,
    replace_section,
)
from bridge.notifications import Notification
from bridge.targets.webhook import sign

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "notifications.md"
SCRIPT = ROOT / "scripts" / "notification-examples"
JSON_BLOCK = re.compile(r"^```json\n(.*?)\n```$", re.DOTALL | re.MULTILINE)


@pytest.fixture(scope="module")
def examples() -> list[Notification]:
    return build_examples()


def test_one_example_per_type_in_order(examples: list[Notification]) -> None:
    assert [n.type for n in examples] == list(TYPES)
    assert len({n.id for n in examples}) == len(examples)


@pytest.mark.parametrize("index", range(len(TYPES)), ids=list(TYPES))
def test_every_example_validates(examples: list[Notification], index: int) -> None:
    n = examples[index]
    validate_envelope(n.envelope())
    # What targets receive is the stored body: it must parse to the same envelope.
    assert json.loads(n.body) == n.envelope()


def test_examples_are_stable(examples: list[Notification]) -> None:
    again = build_examples()
    assert [n.body for n in again] == [n.body for n in examples]


def test_examples_show_the_interesting_cases(examples: list[Notification]) -> None:
    by_type = {n.type: n.data for n in examples}
    created, updated = by_type["event.created"], by_type["event.updated"]
    assert created["ticket"] == updated["ticket"]
    assert (created["revision"], created["changed"]) == (1, [])
    assert updated["revision"] == 2
    assert updated["changed"] == [
        "media.has_video",
        "media.uploading",
        "media.videos_count",
        "media.videos",
    ]
    # The update carries the video links (one per camera); the creation had none yet.
    assert created["media"]["videos"] is None
    assert [v["cam_id"] for v in updated["media"]["videos"]] == ["C_F", "C_I", "C_E"]
    assert all(v["url"].startswith("https://") for v in updated["media"]["videos"])
    assert created["device"]["serial_number"] is None  # absent from the poll list: null
    assert by_type["clip.completed"]["videos"]
    assert by_type["clip.completed"]["ticket"]
    assert by_type["clip.failed"]["error"]["code"].startswith("D_E")
    assert by_type["upload.updated"]["state"] == "uploading"
    assert by_type["report.safety"]["total_events"] > 0


def test_doc_holds_exactly_the_examples(examples: list[Notification]) -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert JSON_BLOCK.findall(doc) == [envelope_json(n) for n in examples], (
        "docs/notifications.md is out of date: run "
        ".venv/bin/python scripts/notification-examples --write"
    )
    assert doc_section(doc) == render_markdown()
    assert replace_section(doc, render_markdown()) == doc


def test_script_prints_the_section() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout == render_markdown()


def test_doc_verification_snippet_accepts_a_signed_delivery(
    examples: list[Notification], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = DOC.read_text(encoding="utf-8")
    (snippet,) = re.findall(r"^```python\n(.*?)\n```$", doc, re.DOTALL | re.MULTILINE)
    secret = "whsec_" + base64.b64encode(b"example secret for the doc test").decode()
    monkeypatch.setenv("FLEET_BRIDGE_WEBHOOK_SECRET", secret)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, str(DOC), "exec"), namespace)  # noqa: S102 - our own doc
    n = examples[0]
    timestamp = int(time.time())
    headers = {
        "Webhook-Id": n.id,
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": sign([secret], n.id, timestamp, n.body),
    }
    body = n.body.encode()
    assert namespace["receive"](body, headers) == 200
    assert namespace["receive"](body, headers) == 200  # the retry is acknowledged
    assert namespace["seen"] == {n.id}
    assert namespace["receive"](body + b" ", headers) == 401
