"""docs/integrations.md shows what the code sends: each example body is re-rendered
here from the `event.created` example and compared, and the doc's own template
renders every notification type."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bridge.examples import build_examples
from bridge.formats.cloudevents import CloudEventsFormat
from bridge.formats.template import TemplateFormat, preset_source

DOC = (Path(__file__).resolve().parent.parent / "docs" / "integrations.md").read_text()
EXAMPLES = build_examples()
EVENT = next(n for n in EXAMPLES if n.type == "event.created")
VARS = {"routing_key": "R0123456789abcdef0123456789abcde", "tz": "Europe/Amsterdam"}


def section(heading: str) -> str:
    start = DOC.index(f"\n## {heading}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end > 0 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)\n```", text, flags=re.DOTALL)


@pytest.mark.parametrize(
    ("heading", "preset"),
    [
        ("PagerDuty", "pagerduty"),
        ("Microsoft Teams", "teams"),
        ("Discord", "discord"),
    ],
)
def test_preset_examples_are_what_the_preset_renders(heading: str, preset: str) -> None:
    [shown] = blocks(section(heading), "json")
    fmt = TemplateFormat(preset_source(preset), target="t", variables=VARS)
    assert json.loads(shown) == json.loads(fmt.render(EVENT.envelope()).body)


def test_cloudevents_examples_are_what_the_format_sends() -> None:
    text = section("CloudEvents")
    [structured] = blocks(text, "json")
    fmt = CloudEventsFormat(mode="structured", type_prefix="com.visionmax.")
    assert json.loads(structured) == json.loads(fmt.render(EVENT.envelope(), EVENT.body).body)
    binary = CloudEventsFormat(mode="binary", type_prefix="com.visionmax.")
    headers = binary.render(EVENT.envelope(), EVENT.body).headers
    [shown] = blocks(text, "text")
    assert shown == "\n".join(f"{k}: {v}" for k, v in headers)


def test_the_own_template_example_renders_every_type() -> None:
    [template] = blocks(section("Writing your own template"), "jinja")
    fmt = TemplateFormat(template, target="t", variables={})
    for n in EXAMPLES:
        text = json.loads(fmt.render(n.envelope()).body)["text"]
        assert text.strip()
