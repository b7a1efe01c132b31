"""Notification envelope → Slack Block Kit message (SPEC §6.2). Pure: no I/O, no clock.

`format_message` never raises, whatever the envelope holds: fields may be missing
(a target's `redact` removes them), of the wrong type, or absurdly long.

Two rules hold for every message it builds:

- **Vendor strings are inert.** Every string that came from the vendor is cleaned
  (control and bidi-override characters collapsed to spaces) and, wherever Slack
  parses mrkdwn — section text, fields, context and the top-level `text` fallback,
  which Slack parses too — escaped (`&` → `&amp;`, `<` → `&lt;`, `>` → `&gt;`). So a
  driver called `<!channel>` cannot ping a channel and `<http://evil|click>` cannot
  become a disguised link. The only raw `<` in mrkdwn are the bridge's own links
  (the map link and video links), whose URLs are checked to be http(s) and whose
  `|` and `>` are percent-encoded. The header is `plain_text`, which Slack never
  parses, so it carries the vendor's text as is.
- **Block Kit limits are respected** (`blocks.py`). Lengths are measured in UTF-16
  code units (an emoji counts twice), the stricter of the counts Slack might use.

One module per kind of notification: `events.py`, `groups.py` (`event.group`),
`tasks.py` (clips and uploads), `report.py`; `blocks.py` and `media.py` hold what
they share. The test message and unknown types are built here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import tzinfo
from typing import Any

from bridge.display import clean, zone
from bridge.markup import escape_mrkdwn
from bridge.slack_format.blocks import (
    SlackMessage,
    context,
    context_parts,
    finish,
    header,
    m,
    section,
)
from bridge.slack_format.events import event_message
from bridge.slack_format.groups import group_message
from bridge.slack_format.report import report_message
from bridge.slack_format.tasks import clip_message, upload_message

__all__ = ["SlackMessage", "format_message"]


def _test_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    target = m(data.get("target"), 64)
    message = m(data.get("message"), 500)
    lead = f"Test message for target *{target}*" if target else "Test message"
    body = f"{lead}: {message}" if message else f"{lead}. If you can read this, delivery works."
    blocks = [
        header("✅", "fleet-bridge test"),
        section(body),
        context(context_parts(envelope, type_)),
    ]
    text = f"✅ fleet-bridge test message for target {target}" if target else "✅ fleet-bridge test"
    return finish(blocks, text)


def _other_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    kind = escape_mrkdwn(clean(type_, 64) or "unknown")
    blocks = [
        header("🔔", "fleet-bridge notification"),
        section(f"A notification of type `{kind}`: see the receiver's logs for its data."),
        context(context_parts(envelope, type_)),
    ]
    return finish(blocks, f"🔔 fleet-bridge notification ({kind})")


_Formatter = Callable[[Mapping[str, Any], str, Mapping[str, Any], tzinfo], SlackMessage]


def _formatter(type_: str) -> _Formatter:
    if type_ in ("event.created", "event.updated"):
        return event_message
    if type_ == "event.group":
        return group_message
    if type_.startswith("clip."):
        return clip_message
    if type_ == "upload.updated":
        return upload_message
    if type_ == "report.safety":
        return report_message
    if type_ == "bridge.test":
        return _test_message
    return _other_message


def format_message(envelope: Mapping[str, Any], *, tz: str | tzinfo | None = "UTC") -> SlackMessage:
    """The Slack message (`text` fallback + Block Kit `blocks`) for one notification.

    Times are shown in `tz` (a zone name or tzinfo). Never raises.
    """
    envelope = envelope if isinstance(envelope, Mapping) else {}
    type_ = envelope.get("type")
    type_ = type_ if isinstance(type_, str) else "unknown"
    data = envelope.get("data")
    data = data if isinstance(data, Mapping) else {}
    return _formatter(type_)(envelope, type_, data, zone(tz))
