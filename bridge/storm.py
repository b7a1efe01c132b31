"""Storm control decisions (SPEC §6.5): grouping, inhibition, quiet hours. Pure: no I/O.

The dispatcher's gate (`storm_gate.py`) reads the stored state, asks these
functions what to do with each due delivery, and writes the answer in one store
transaction. Everything here is a function of its arguments (the clock's `now`
included), so it is tested without an event loop.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Final, Protocol, TypeVar
from zoneinfo import ZoneInfo

from bridge.clock import parse_rfc3339, utc_iso
from bridge.notifications import Notification
from bridge.routing import SEVERITY_ORDER, matches
from bridge.settings import WEEKDAYS, GroupSettings, InhibitRule, MuteWindow, StormFilter

GROUP_TYPE: Final = "event.group"


# -- values at dotted paths -------------------------------------------------------------


def value_at(data: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of `data`, or None when any step is missing."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def key_of(paths: Sequence[str], data: Mapping[str, Any]) -> dict[str, Any]:
    """{path: value} for each path (the `key` of an `event.group`)."""
    return {path: value_at(data, path) for path in paths}


def encode_key(key: Mapping[str, Any]) -> str:
    """A group key as stored: canonical JSON, so equal values give equal strings."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode_key(stored: str) -> dict[str, Any]:
    value = json.loads(stored) if stored else {}
    return value if isinstance(value, dict) else {}


# -- filters ----------------------------------------------------------------------------


def matches_storm(flt: StormFilter, n: Notification) -> bool:
    """A target filter plus `max_severity` (a notification without severity fails it)."""
    if not matches(flt, n):
        return False
    if flt.max_severity is None:
        return True
    severity = n.keys.severity
    if severity is None:
        return False
    return SEVERITY_ORDER.get(severity, 0) <= SEVERITY_ORDER[flt.max_severity]


# -- inhibition ---------------------------------------------------------------------------


def occurred_at(n: Notification) -> float | None:
    value = n.data.get("occurred_at")
    if not isinstance(value, str):
        return None
    try:
        return parse_rfc3339(value).timestamp()
    except ValueError:
        return None


def suppressing_rules(rules: Sequence[InhibitRule], n: Notification) -> list[InhibitRule]:
    """The rules that could suppress `n`: it matches `suppress` and not `when`."""
    if n.type == GROUP_TYPE:
        return []
    return [r for r in rules if matches_storm(r.suppress, n) and not matches_storm(r.when, n)]


def inhibit_window(rules: Sequence[InhibitRule], n: Notification) -> tuple[float, float] | None:
    """The `occurred_at` range in which an inhibiting notification must lie (None: none)."""
    at = occurred_at(n)
    applicable = suppressing_rules(rules, n)
    if at is None or not applicable:
        return None
    widest = max(r.window_s for r in applicable)
    return at - widest, at + widest


def inhibited(
    rules: Sequence[InhibitRule], n: Notification, neighbours: Iterable[Notification]
) -> bool:
    """True when a neighbour (another notification for the same target) inhibits `n`."""
    at = occurred_at(n)
    applicable = suppressing_rules(rules, n)
    if at is None or not applicable:
        return False
    others = [(m, occurred_at(m)) for m in neighbours if m.id != n.id and m.type != GROUP_TYPE]
    for rule in applicable:
        for other, other_at in others:
            if other_at is None or abs(other_at - at) > rule.window_s:
                continue
            if not matches_storm(rule.when, other):
                continue
            if all(value_at(other.data, p) == value_at(n.data, p) for p in rule.equal):
                return True
    return False


# -- quiet hours --------------------------------------------------------------------------


def _hhmm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def window_active(window: MuteWindow, now: float) -> bool:
    """True when `now` lies inside the window in its time zone.

    `from` > `to` crosses midnight: the part after midnight belongs to the day the
    window started (a Friday 22:00-06:00 window covers Saturday 03:00). `from` ==
    `to` is the whole day.
    """
    local = datetime.fromtimestamp(now, ZoneInfo(window.tz))
    start, end, t = _hhmm(window.from_), _hhmm(window.to), local.time()
    today = WEEKDAYS[local.weekday()]
    yesterday = WEEKDAYS[(local - timedelta(days=1)).weekday()]
    if start == end:
        return today in window.days
    if start < end:
        return today in window.days and start <= t < end
    return (t >= start and today in window.days) or (t < end and yesterday in window.days)


def muted(windows: Sequence[MuteWindow], type_: str, now: float) -> bool:
    """True when a delivery of `type_` is held at `now`."""
    if type_ == GROUP_TYPE:
        return False
    return any(type_ in w.types and window_active(w, now) for w in windows)


def any_muted(windows: Sequence[MuteWindow], now: float) -> bool:
    """True while any window is active: held deliveries are released only after all end."""
    return any(window_active(w, now) for w in windows)


# -- grouping ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupState:
    """A group key's stored state for one target."""

    last_sent_at: float | None  # the last send for this key (alone or as a group)
    flush_at: float | None  # members wait until then; None: nobody waits


@dataclass(frozen=True)
class Admission:
    send: bool  # True: send as itself now; False: join the group (state `grouped`)
    state: GroupState  # the key's new state


def admit(state: GroupState | None, now: float, group: GroupSettings) -> Admission:
    """Send a new member at once, or let it join its group.

    A key is *open* while members wait or its last send is younger than
    `interval_s`. The first notification of a closed key goes at once (`wait_s`
    0) or waits `wait_s` for company; later ones join and go out together
    `interval_s` after the key's last send.
    """
    last = state.last_sent_at if state else None
    flush_at = state.flush_at if state else None
    is_open = flush_at is not None or (last is not None and now - last < group.interval_s)
    if not is_open:
        if group.wait_s <= 0:
            return Admission(True, GroupState(now, None))
        return Admission(False, GroupState(last, now + group.wait_s))
    if flush_at is None:
        assert last is not None
        flush_at = last + group.interval_s
    return Admission(False, GroupState(last, flush_at))


class Waiting(Protocol):
    """A parked delivery as the flush reads it."""

    @property
    def delivery_id(self) -> int: ...

    @property
    def group_key(self) -> str: ...


W = TypeVar("W", bound=Waiting)


def group_data(
    reason: str, key: Mapping[str, Any], members: Sequence[Notification], max_items: int
) -> dict[str, Any]:
    """`data` of an `event.group` (SPEC §3) for members in creation order."""
    ordered = sorted(members, key=lambda m: (occurred_at(m) or m.created_at, m.id))
    times = [occurred_at(m) for m in ordered]
    known = [t for t in times if t is not None]
    by_severity = Counter(str(m.data.get("severity") or "unknown") for m in ordered)
    by_type = Counter(_event_name(m) for m in ordered)
    items = [{"notification_id": m.id, "type": m.type, "data": m.data} for m in ordered[:max_items]]
    return {
        "reason": reason,
        "key": dict(key),
        "count": len(ordered),
        "first_occurred_at": _iso(min(known)) if known else None,
        "last_occurred_at": _iso(max(known)) if known else None,
        "by_severity": dict(by_severity),
        "by_event_type": dict(by_type),
        "items": items,
        "truncated": max(0, len(ordered) - max_items),
    }


def _event_name(n: Notification) -> str:
    name = value_at(n.data, "event_type.name")
    return name if isinstance(name, str) and name else "unknown"


def _iso(ts: float) -> str:
    return utc_iso(ts)


def split_by_key(members: Sequence[W]) -> dict[str, list[W]]:
    """Members by group key, keys in the order of their oldest member."""
    out: dict[str, list[W]] = {}
    for member in sorted(members, key=lambda m: m.delivery_id):
        out.setdefault(member.group_key, []).append(member)
    return out
