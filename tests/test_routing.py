"""Target filters and redaction: pure functions over notifications."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bridge.dedup import event_data_with_revision
from bridge.event_types import EventTypeTable
from bridge.normalize import clip_data, normalize_event
from bridge.notifications import Notification, build_notification
from bridge.routing import SEVERITY_ORDER, matches, redact, route
from bridge.settings import ConsoleTarget, TargetFilter

TABLE = EventTypeTable({})
NOW = 1_764_000_000.0
BASE = "https://fleet.example.com"


def _event(
    code: int = 22,
    type_name: str = "Harsh Braking",
    severity: int | str = 3,
    cid: str | None = "cid-1",
    kind: str = "event.created",
) -> Notification:
    item: dict[str, Any] = {
        "ticket": f"tk-{code}-{severity}",
        "timestamp": 1_764_000_000,
        "type": code,
        "type_name": type_name,
        "severity_level": severity,
        "driver_id": 7,
        "driver_name": "Jane Doe",
        "lat": 25.0,
        "lng": 121.0,
        "asset_info": {"has_video": True, "uploading": False},
    }
    if cid is not None:
        item["device_cid"] = cid
    data = event_data_with_revision(normalize_event(item, TABLE).data, 1, [])
    return build_notification(kind, data, base_url=BASE, now=NOW)


def _clip() -> Notification:
    data = clip_data(
        {"task_id": "task-1", "task_state": 5},
        serial_number="SN1",
        cam_id="C_F",
        file_name="f",
        target_timestamp=1_764_000_000,
        duration_s=30,
    )
    return build_notification("clip.updated", data, base_url=BASE, now=NOW)


def _test() -> Notification:
    return build_notification(
        "bridge.test", {"target": "t", "message": "hi"}, base_url=BASE, now=NOW
    )


def test_severity_order_puts_unknown_below_minor() -> None:
    assert SEVERITY_ORDER["unknown"] < SEVERITY_ORDER["minor"] < SEVERITY_ORDER["moderate"]
    assert SEVERITY_ORDER["moderate"] < SEVERITY_ORDER["severe"]


def test_empty_filter_matches_everything() -> None:
    flt = TargetFilter()
    for n in (_event(), _event(severity=0), _clip(), _test()):
        assert matches(flt, n)


def test_types_filter() -> None:
    flt = TargetFilter(types=["event.created"])
    assert matches(flt, _event())
    assert not matches(flt, _event(kind="event.updated"))
    assert not matches(flt, _clip())


def test_event_types_filter_needs_a_code() -> None:
    flt = TargetFilter(event_types=[1, 22])
    assert matches(flt, _event(code=22))
    assert matches(flt, _event(code=1))
    assert not matches(flt, _event(code=4))
    assert not matches(flt, _clip())  # no event code: a set criterion does not match


def test_categories_filter() -> None:
    flt = TargetFilter(categories=["dms", "adas"])
    assert matches(flt, _event(type_name="Phoning"))
    assert matches(flt, _event(type_name="LDW"))
    assert not matches(flt, _event(type_name="Harsh Braking"))
    assert not matches(flt, _clip())


@pytest.mark.parametrize(
    ("min_severity", "level", "expected"),
    [
        ("minor", 1, True),
        ("minor", 0, False),  # unknown is below minor
        ("moderate", 1, False),
        ("moderate", 2, True),
        ("moderate", 3, True),
        ("severe", 2, False),
        ("severe", 3, True),
        ("unknown", 0, True),
        ("unknown", 1, True),
    ],
)
def test_min_severity(min_severity: Any, level: int, expected: bool) -> None:
    assert matches(TargetFilter(min_severity=min_severity), _event(severity=level)) is expected


def test_min_severity_does_not_match_notifications_without_severity() -> None:
    assert not matches(TargetFilter(min_severity="unknown"), _clip())
    assert not matches(TargetFilter(min_severity="minor"), _test())


def test_device_cids_filter() -> None:
    flt = TargetFilter(device_cids=["cid-1"])
    assert matches(flt, _event(cid="cid-1"))
    assert not matches(flt, _event(cid="cid-2"))
    assert not matches(flt, _event(cid=None))


def test_criteria_are_anded() -> None:
    flt = TargetFilter(
        types=["event.created"], categories=["sensor"], min_severity="severe", device_cids=["cid-1"]
    )
    assert matches(flt, _event())
    assert not matches(flt, _event(severity=2))
    assert not matches(flt, _event(type_name="Phoning"))
    assert not matches(flt, _event(cid="cid-2"))
    assert not matches(flt, _event(kind="event.updated"))


def test_route_returns_matching_target_names_in_order() -> None:
    targets = [
        ConsoleTarget(type="console", name="all"),
        ConsoleTarget(type="console", name="severe", filter=TargetFilter(min_severity="severe")),
        ConsoleTarget(type="console", name="dms", filter=TargetFilter(categories=["dms"])),
        ConsoleTarget(type="console", name="clips", filter=TargetFilter(types=["clip.updated"])),
    ]
    assert route(targets, _event()) == ["all", "severe"]
    assert route(targets, _event(type_name="Phoning", severity=1)) == ["all", "dms"]
    assert route(targets, _clip()) == ["all", "clips"]
    assert route([], _event()) == []


def test_bridge_test_is_never_routed() -> None:
    targets = [ConsoleTarget(type="console", name="all")]
    assert route(targets, _test()) == []


# --------------------------------------------------------------------------- redact


def test_redact_removes_paths_from_data_only() -> None:
    envelope = _event().envelope()
    original = copy.deepcopy(envelope)
    out = redact(envelope, ["driver.name", "location", "id", "media.nope", "no.such.path"])

    assert envelope == original  # input not mutated
    assert "name" not in out["data"]["driver"]
    assert out["data"]["driver"] == {"id": 7}
    assert "location" not in out["data"]
    assert out["id"] == envelope["id"]  # paths are within data, never the envelope
    assert out["data"]["media"] == envelope["data"]["media"]
    out["data"]["device"]["cid"] = "changed"
    assert envelope["data"]["device"]["cid"] == "cid-1"  # a deep copy


def test_redact_applies_through_lists() -> None:
    data = {
        "videos": [
            {"cam_id": "C_F", "url": "https://a"},
            {"cam_id": "C_I", "url": "https://b"},
        ]
    }
    envelope = {"id": "x", "data": data}
    out = redact(envelope, ["videos.url"])
    assert out["data"]["videos"] == [{"cam_id": "C_F"}, {"cam_id": "C_I"}]
    assert data["videos"][0]["url"] == "https://a"


def test_redact_with_no_paths_is_an_equal_copy() -> None:
    envelope = _clip().envelope()
    out = redact(envelope, [])
    assert out == envelope
    assert out is not envelope
    assert out["data"] is not envelope["data"]


def test_redact_ignores_empty_and_odd_paths() -> None:
    envelope = {"data": {"a": {"b": 1}, "c": 2}}
    out = redact(envelope, ["", ".", "a.b.c", "c.d"])
    assert out == envelope


def test_credentials_in_the_base_url_never_reach_a_notification() -> None:
    n = build_notification(
        "bridge.test",
        {"target": "t", "message": "hi"},
        base_url="https://ops:s3cret-PW@fleet.example.com/api?token=q-SECRET",
        now=NOW,
    )
    assert n.envelope()["source"]["base_url"] == "https://fleet.example.com/api"
    assert "SECRET" not in n.body
    assert "s3cret" not in n.body
