"""MQTT topic rendering (SPEC §6.3). Pure: no I/O.

A topic template such as `{prefix}/{type_path}/{device_cid}` is filled from the
notification. Values come from the vendor, so a substituted value must never add a
topic level or a wildcard: `/`, `+`, `#` and NUL in a value become `_`, and an empty
or missing value becomes `-` (an empty level would merge two subscriptions'
namespaces). The operator's `topic_prefix` may span levels (`acme/fleet`) but not
hold wildcards.

When a target redacts `data.device`, the topic shows `-` for the device: what a
target must not receive in its payload it must not receive in its topic either.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

MISSING = "-"
STATUS_SUFFIX = "bridge/status"

_UNSAFE = re.compile(r"[/+#\x00]")
_WILDCARDS = re.compile(r"[+#\x00]")
# Placeholders that read nothing but the notification type: a template using only
# these renders without parsing the stored body.
TYPE_ONLY_PLACEHOLDERS = frozenset({"prefix", "type", "type_path"})


def level(value: object) -> str:
    """One topic level from an untrusted value: no separators, no wildcards, never empty."""
    if value is None or isinstance(value, dict | list):
        return MISSING
    text = str(value)
    return _UNSAFE.sub("_", text) if text else MISSING


def clean_prefix(prefix: str) -> str:
    """The configured prefix with wildcards and NUL replaced (levels are kept)."""
    return _WILDCARDS.sub("_", prefix)


def status_topic(prefix: str) -> str:
    """The retained availability topic `{prefix}/bridge/status`."""
    return f"{clean_prefix(prefix)}/{STATUS_SUFFIX}"


def placeholders(template: str) -> frozenset[str]:
    """The placeholder names a template uses."""
    return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f)


def type_values(prefix: str, type_: str) -> dict[str, str]:
    """`prefix`, `type` and `type_path` (`event.created` → `event/created`)."""
    return {
        "prefix": clean_prefix(prefix),
        "type": level(type_),
        "type_path": "/".join(level(part) for part in type_.split(".")) if type_ else MISSING,
    }


def topic_values(prefix: str, envelope: Mapping[str, Any]) -> dict[str, str]:
    """Every placeholder's value for one notification envelope."""
    data = envelope.get("data")
    data = data if isinstance(data, Mapping) else {}
    device = data.get("device")
    device_cid = device.get("cid") if isinstance(device, Mapping) else None
    if device_cid in (None, ""):
        device_cid = data.get("device_cid")
    event_type = data.get("event_type")
    code = event_type.get("code") if isinstance(event_type, Mapping) else event_type
    type_ = envelope.get("type")
    return {
        **type_values(prefix, type_ if isinstance(type_, str) else ""),
        "device_cid": level(device_cid),
        "event_type": level(code),
        "severity": level(data.get("severity")),
        "ticket": level(data.get("ticket")),
    }


def render_topic(template: str, values: Mapping[str, str]) -> str:
    """The template filled with already-sanitized `values`."""
    return template.format_map(values)
