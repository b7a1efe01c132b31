"""Which targets get a notification, and what each may see (SPEC §2). Pure: no I/O.

A target's `filter` criteria are AND-ed; an empty filter takes everything. A
criterion that looks at a routing key the notification does not have (e.g.
`min_severity` on a `clip.*` notification) does not match: a target that asks
for severe events only must not receive clip progress.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from bridge.notifications import Notification
from bridge.settings import TargetFilter

SEVERITY_ORDER: Final[Mapping[str, int]] = {"unknown": 0, "minor": 1, "moderate": 2, "severe": 3}
"""Severity ranks for `min_severity`; `unknown` ranks below `minor`."""

TEST_TYPE: Final = "bridge.test"


class RoutableTarget(Protocol):
    """What routing needs of a target's settings (every target model has these)."""

    @property
    def name(self) -> str: ...

    @property
    def filter(self) -> TargetFilter: ...


def matches(flt: TargetFilter, n: Notification) -> bool:
    """True when `n` passes every criterion set on `flt`."""
    keys = n.keys
    if flt.types and n.type not in flt.types:
        return False
    if flt.event_types and (keys.event_code is None or keys.event_code not in flt.event_types):
        return False
    if flt.categories and (keys.category is None or keys.category not in flt.categories):
        return False
    if flt.min_severity is not None:
        if keys.severity is None:
            return False
        rank = SEVERITY_ORDER.get(keys.severity, 0)
        if rank < SEVERITY_ORDER[flt.min_severity]:
            return False
    return not (
        flt.device_cids and (keys.device_cid is None or keys.device_cid not in flt.device_cids)
    )


def route(targets: Sequence[RoutableTarget], n: Notification) -> list[str]:
    """Names of the targets whose filter takes `n`, in configuration order.

    A `bridge.test` notification is never routed: it goes to one target directly.
    """
    if n.type == TEST_TYPE:
        return []
    return [t.name for t in targets if matches(t.filter, n)]


def redact(envelope: Mapping[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """A deep copy of `envelope` with each dotted path removed from its `data`.

    `driver.name` removes one key; `location` a whole object; a path through a
    list applies to each element (`videos.url`). Missing paths are ignored and
    the input is never modified.
    """
    out = copy.deepcopy(dict(envelope))
    data = out.get("data")
    if isinstance(data, dict):
        for path in paths:
            parts = [p for p in path.split(".") if p]
            if parts:
                _remove(data, parts)
    return out


def _remove(node: Any, parts: Sequence[str]) -> None:
    if isinstance(node, list):
        for element in node:
            _remove(element, parts)
        return
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    if head not in node:
        return
    if rest:
        _remove(node[head], rest)
    else:
        del node[head]
