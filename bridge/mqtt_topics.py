"""MQTT topic rendering and the broker's content rules (SPEC §6.3). Pure: no I/O.

A topic template such as `{prefix}/{type_path}/{device_cid}` is filled from the
notification. Values come from the vendor, so a substituted value must never add a
topic level or a wildcard: `/`, `+`, `#` in a value become `_`, and an empty or
missing value becomes `-` (an empty level would merge two subscriptions'
namespaces). The operator's `topic_prefix` may span levels (`acme/fleet`) but not
hold wildcards.

MQTT strings must not hold NUL and should not hold control characters (C0, DEL,
C1) or Unicode noncharacters (MQTT 5 §1.5.4); Mosquitto drops a client whose topic
does, and refuses a payload flagged as UTF-8 that does. So those become `_` in
every substituted value and in the prefix, `topic_problem` says why a finished
topic would still be refused (the sender then fails the delivery for good rather
than reconnecting forever), and `payload_bytes` writes them in the JSON payload as
`\\uXXXX` escapes: the same JSON value, bytes every broker accepts.

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

MAX_TOPIC_BYTES = 65535
# Characters no MQTT string may carry: C0 (JSON escapes these in payloads) and the
# rest: DEL, C1, lone surrogates, noncharacters (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF).
_C0 = "\x00-\x1f"
_OTHER = "\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef" + "".join(
    chr(plane + 0xFFFE) + chr(plane + 0xFFFF) for plane in range(0, 0x110000, 0x10000)
)
_UNSAFE = re.compile(f"[/+#{_C0}{_OTHER}]")
_WILDCARDS = re.compile(f"[+#{_C0}{_OTHER}]")
_FORBIDDEN_CHAR = re.compile(f"[{_C0}{_OTHER}]")
_PAYLOAD_UNSAFE = re.compile(f"[{_OTHER}]")
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
    """The configured prefix with wildcards and control characters replaced (levels kept)."""
    return _WILDCARDS.sub("_", prefix)


def status_topic(prefix: str) -> str:
    """The retained availability topic `{prefix}/bridge/status`."""
    return f"{clean_prefix(prefix)}/{STATUS_SUFFIX}"


def replica_slug(replica: str) -> str:
    """A replica id without topic levels, wildcards or control characters."""
    safe = "".join("_" if c in "/+#" or ord(c) < 32 or 127 <= ord(c) < 160 else c for c in replica)
    return safe or "-"


def replica_status_topic(prefix: str, replica: str) -> str:
    """`{prefix}/bridge/replicas/{replica}/status` (SPEC §6.3); the replica id never adds
    a topic level, a wildcard or a control character."""
    return f"{clean_prefix(prefix)}/bridge/replicas/{replica_slug(replica)}/status"


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


def topic_problem(topic: str) -> str | None:
    """Why a broker would refuse `topic` for its content; None when it is acceptable."""
    if not topic:
        return "empty topic"
    if "+" in topic or "#" in topic:
        return "wildcard in a publish topic"
    bad = _FORBIDDEN_CHAR.search(topic)
    if bad is not None:
        return f"character U+{ord(bad.group()):04X} in the topic"
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        return f"topic longer than {MAX_TOPIC_BYTES} bytes"
    return None


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code > 0xFFFF:  # JSON writes astral characters as a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def payload_bytes(body: str) -> bytes:
    """The compact JSON `body` as UTF-8 with characters MQTT refuses escaped (same JSON)."""
    if _PAYLOAD_UNSAFE.search(body) is not None:
        body = _PAYLOAD_UNSAFE.sub(_escape, body)
    return body.encode("utf-8")
