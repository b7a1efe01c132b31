"""The notification envelope (SPEC §3, version 1) and its identifiers. Pure: no I/O.

A `Notification` is what the pipeline stores once and every target receives. Its
`body` is the compact UTF-8 JSON of the envelope, serialized once at creation so
dispatchers send stored bytes instead of re-encoding per delivery.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bridge.clock import parse_rfc3339, utc_iso

ENVELOPE_VERSION = 1
SOURCE_SYSTEM = "visionmax"

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# One encoder for every body: json.dumps with options builds a new one per call,
# and the circular-reference check is moot for data parsed from JSON (measured:
# 8.4 µs → 7.0 µs per envelope).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


def new_notification_id(now: float | None = None) -> str:
    """`ntf_` + a ULID: 48 bits of milliseconds then 80 random bits, Crockford base32.

    Sortable by creation time, so ids double as a stable order for receivers.
    """
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "ntf_" + "".join(reversed(chars))


def dumps(obj: Any) -> str:
    """Compact JSON, UTF-8 kept as is (the wire format of every target)."""
    return _ENCODER.encode(obj)


@dataclass(frozen=True)
class RoutingKeys:
    """What target filters look at; derived from `data`, never sent."""

    event_code: int | None = None
    category: str | None = None
    severity: str | None = None
    device_cid: str | None = None
    ticket: str | None = None


@dataclass(frozen=True)
class Notification:
    """One notification: envelope fields plus routing keys."""

    id: str
    type: str
    created_at: float
    source_base_url: str
    data: dict[str, Any]
    keys: RoutingKeys = field(default_factory=RoutingKeys)
    event_at: float | None = None  # when the source event happened (latency metric)

    def envelope(self) -> dict[str, Any]:
        """The envelope as a dict (SPEC §3)."""
        return {
            "id": self.id,
            "type": self.type,
            "version": ENVELOPE_VERSION,
            "created_at": utc_iso(self.created_at, millis=True),
            "source": {"system": SOURCE_SYSTEM, "base_url": self.source_base_url},
            "data": self.data,
        }

    @cached_property
    def body(self) -> str:
        """The envelope as compact JSON."""
        return dumps(self.envelope())


def build_notification(
    type_: str,
    data: dict[str, Any],
    *,
    base_url: str,
    now: float,
    keys: RoutingKeys | None = None,
    notification_id: str | None = None,
    event_at: float | None = None,
) -> Notification:
    """A new notification with a fresh id (or the given one)."""
    return Notification(
        id=notification_id or new_notification_id(now),
        type=type_,
        created_at=now,
        source_base_url=public_url(base_url),
        data=data,
        keys=keys or routing_keys(type_, data),
        event_at=event_at,
    )


def public_url(url: str) -> str:
    """`url` without userinfo and query: credentials never travel in a notification."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def routing_keys(type_: str, data: dict[str, Any]) -> RoutingKeys:
    """Routing keys read from a notification's `data` (event and clip shapes)."""
    event_type = data.get("event_type") if isinstance(data.get("event_type"), dict) else None
    device = data.get("device") if isinstance(data.get("device"), dict) else None
    return RoutingKeys(
        event_code=event_type.get("code") if event_type else None,
        category=event_type.get("category") if event_type else None,
        severity=data.get("severity"),
        device_cid=(device or {}).get("cid") or data.get("device_cid"),
        ticket=data.get("ticket"),
    )


def notification_from_envelope(envelope: dict[str, Any]) -> Notification:
    """Rebuild a Notification from its envelope (e.g. one kept in the store)."""
    created = parse_rfc3339(str(envelope["created_at"]))
    data = envelope.get("data") or {}
    return Notification(
        id=envelope["id"],
        type=envelope["type"],
        created_at=created.timestamp(),
        source_base_url=(envelope.get("source") or {}).get("base_url", ""),
        data=data,
        keys=routing_keys(envelope["type"], data),
    )
