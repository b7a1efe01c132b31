"""The pure normalizer: vendor items → notification data (no I/O, no event loop)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vendor_models import EventItem, PushMessage, StorageItem, TaskResult, VideoDetail

from bridge.event_types import BUILTIN_EVENT_TYPES, EventTypeTable, category_from_name
from bridge.normalize import (
    CAMERA_ERRORS,
    CLIP_TERMINAL_STATES,
    TASK_STATES,
    MalformedItem,
    NormalizedEvent,
    clip_data,
    clip_type,
    normalize_event,
    normalize_push_event,
    report_data,
    severity,
    upload_data,
)
from bridge.settings import EventTypeOverride
from bridge.upstream.models import VendorPush

TABLE = EventTypeTable({})

FULL_ITEM: dict[str, Any] = {
    "asset_info": {"uploading": False, "has_video": True},
    "car_id": 123,
    "clicked_count": 0,
    "device_cid": "96732f17-b4d1-4b67-97de-3fae29237057",
    "driver_avatar": "https://cdn.example.com/a.png",
    "driver_id": 7,
    "driver_name": "Jane Doe",
    "driver_status": 1,
    "expired": False,
    "expiry": 1_764_604_800,
    "is_new": True,
    "lat": 25.0471,
    "lng": 121.3741,
    "name": "Harsh Braking",
    "recording_id": 99,
    "severity_level": 3,
    "tag": 0,
    "ticket": "4b2afd89-8123-4842-b430-c95fc143b14a",
    "ticket_linked": "0f6e1d1a-0000-4000-8000-000000000001",
    "timestamp": 1_764_000_000,
    "trip_id": 456,
    "type": 22,
    "type_name": "Harsh Braking",
    "upload_status": 2,
    "uuid": "9f0e2c55-7d6b-4a57-9d4c-3c1b0cfa1b10",
    "video_uploaded": 1,
    "videos_count": 1,
    "videos_total_count": 2,
    "some_future_vendor_field": {"nested": [1, 2, 3]},
}

PUSH_MESSAGE: dict[str, Any] = json.loads(
    json.dumps(
        {
            "device_sn": "K245A0001234",
            "device_cid": "96732f17-b4d1-4b67-97de-3fae29237057",
            "gps": {
                "lng": "121.374111",
                "lat": "25.047111",
                "alt": "0.0",
                "speed": "0.0",
                "direction": "N",
            },
            "timestamp": 1706745916,
            "event_type": 5,
            "event_name": "Start Up",
            "ticket": "4b2afd89-8123-4842-b430-c95fc143b14a",
            "severity_level": "Minor",
            "task_id": "t-1",
            "detail": "https://portal.example.com/e/1",
            "snapshots": {"count": 2, "capture_mode": ["C_F", "C_I"]},
            "video": {"count": 0, "capture_mode": []},
            "nfc": {"id": "ee565d"},
        }
    )
)


# --------------------------------------------------------------------------- events


def test_full_item_becomes_exactly_the_spec_shape() -> None:
    ev = normalize_event(FULL_ITEM, TABLE)

    assert isinstance(ev, NormalizedEvent)
    assert ev.ticket == "4b2afd89-8123-4842-b430-c95fc143b14a"
    assert ev.occurred_at == 1_764_000_000.0
    assert ev.data == {
        "ticket": "4b2afd89-8123-4842-b430-c95fc143b14a",
        "linked_ticket": "0f6e1d1a-0000-4000-8000-000000000001",
        "event_type": {"code": 22, "name": "Harsh Braking", "category": "sensor"},
        "severity": "severe",
        "occurred_at": "2025-11-24T16:00:00Z",
        "device": {"cid": "96732f17-b4d1-4b67-97de-3fae29237057", "serial_number": None},
        "vehicle": {"id": 123},
        "driver": {"id": 7, "name": "Jane Doe"},
        "location": {"lat": 25.0471, "lng": 121.3741},
        "trip_id": 456,
        "media": {
            "has_video": True,
            "uploading": False,
            "videos_count": 1,
            "videos_total_count": 2,
            "expired": False,
            "expires_at": "2025-12-01T16:00:00Z",
            "videos": None,  # unknown until GetVideoDetail is asked (bridge.video_links)
        },
        "detail": None,
    }
    # The poll list carries every media field, so all of them are fingerprinted.
    assert ev.fingerprint == {k: v for k, v in ev.data["media"].items() if k != "videos"}
    assert "revision" not in ev.data
    assert "changed" not in ev.data


def test_sparse_item_fills_nulls_and_fingerprints_nothing() -> None:
    ev = normalize_event({"ticket": "t-1", "timestamp": 1_700_000_000}, TABLE)

    assert ev.data == {
        "ticket": "t-1",
        "linked_ticket": None,
        "event_type": {"code": None, "name": "Unknown", "category": "other"},
        "severity": "unknown",
        "occurred_at": "2023-11-14T22:13:20Z",
        "device": {"cid": None, "serial_number": None},
        "vehicle": {"id": None},
        "driver": {"id": None, "name": None},
        "location": None,
        "trip_id": None,
        "media": dict.fromkeys(
            ("has_video", "uploading", "videos_count", "videos_total_count", "expired"), None
        )
        | {"expires_at": None, "videos": None},
        "detail": None,
    }
    assert ev.fingerprint == {}


def test_loose_types_are_read() -> None:
    item = {
        "ticket": "t",
        "timestamp": "1700000000",
        "type": "22",
        "type_name": "Phoning",
        "lat": "25.5",
        "lng": "121.25",
        "severity_level": "2",
        "car_id": "12",
        "expired": 0,
        "expiry": 0,
        "asset_info": {"has_video": "true", "uploading": 1},
        "videos_count": "3",
    }
    ev = normalize_event(item, TABLE)
    assert ev.occurred_at == 1_700_000_000
    assert ev.data["event_type"] == {"code": 22, "name": "Phoning", "category": "dms"}
    assert ev.data["location"] == {"lat": 25.5, "lng": 121.25}
    assert ev.data["severity"] == "moderate"
    assert ev.data["vehicle"] == {"id": 12}
    assert ev.data["media"]["has_video"] is True
    assert ev.data["media"]["uploading"] is True
    assert ev.data["media"]["expired"] is False
    assert ev.data["media"]["expires_at"] is None  # expiry 0 = no expiry known
    assert ev.fingerprint["expires_at"] is None  # but the source did carry it
    assert ev.fingerprint["videos_count"] == 3


def test_zero_coordinates_are_kept_and_out_of_range_ones_dropped() -> None:
    base = {"ticket": "t", "timestamp": 1}
    assert normalize_event(base | {"lat": 0, "lng": 0}, TABLE).data["location"] == {
        "lat": 0.0,
        "lng": 0.0,
    }
    assert normalize_event(base | {"lat": 91, "lng": 0}, TABLE).data["location"] is None
    assert normalize_event(base | {"lat": 10}, TABLE).data["location"] is None


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (None, "item is not an object"),
        ([{"ticket": "t"}], "item is not an object"),
        ("ticket", "item is not an object"),
        ({"timestamp": 1}, "missing ticket"),
        ({"ticket": "", "timestamp": 1}, "missing ticket"),
        ({"ticket": "   ", "timestamp": 1}, "missing ticket"),
        ({"ticket": 123, "timestamp": 1}, "missing ticket"),
        ({"ticket": None, "timestamp": 1}, "missing ticket"),
        ({"ticket": "t"}, "missing timestamp"),
        ({"ticket": "t", "timestamp": None}, "missing timestamp"),
        ({"ticket": "t", "timestamp": "yesterday"}, "timestamp is not an integer"),
        ({"ticket": "t", "timestamp": 1.5}, "timestamp is not an integer"),
        ({"ticket": "t", "timestamp": True}, "timestamp is not an integer"),
        ({"ticket": "t", "timestamp": [1]}, "timestamp is not an integer"),
        ({"ticket": "t", "timestamp": -1}, "timestamp out of range"),
        ({"ticket": "t", "timestamp": 10**15}, "timestamp out of range"),
        ({"ticket": "t", "timestamp": 1, "type": "impact"}, "type code is not an integer"),
        ({"ticket": "t", "timestamp": 1, "type": 1.5}, "type code is not an integer"),
        ({"ticket": "t", "timestamp": 1, "type": {"code": 1}}, "type code is not an integer"),
        ({"ticket": "t", "timestamp": 1, "type": False}, "type code is not an integer"),
    ],
)
def test_malformed_items_are_rejected_with_a_reason(item: Any, reason: str) -> None:
    with pytest.raises(MalformedItem) as exc:
        normalize_event(item, TABLE)
    assert exc.value.reason == reason
    assert isinstance(exc.value, ValueError)


# --------------------------------------------------------------------------- properties

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ITEM_KEYS = [*FULL_ITEM.keys(), "gps", "video", "event_type", "event_name", "device_sn"]
INT_LIKE = st.integers(min_value=-5, max_value=2_000_000_000) | st.integers().map(str)
# Mostly-valid items with vendor keys and wild values, so the success path is exercised.
ITEM_LIKE = st.fixed_dictionaries(
    {
        "ticket": st.text(min_size=1, max_size=40) | JSON_SCALARS,
        "timestamp": INT_LIKE | JSON_SCALARS,
    },
    optional={k: JSON_VALUES | INT_LIKE for k in ITEM_KEYS if k not in ("ticket", "timestamp")},
)


def _normalize_or_malformed(fn: Any, value: Any) -> NormalizedEvent | MalformedItem:
    try:
        return fn(value, TABLE)  # type: ignore[no-any-return]
    except MalformedItem as err:
        return err


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=8) | JSON_VALUES)
def test_any_json_value_is_normalized_or_malformed(value: Any) -> None:
    result = _normalize_or_malformed(normalize_event, value)
    assert isinstance(result, NormalizedEvent | MalformedItem)
    if isinstance(result, MalformedItem):
        assert result.reason


@settings(max_examples=300, deadline=None)
@given(ITEM_LIKE)
def test_item_like_values_never_raise_anything_else(item: dict[str, Any]) -> None:
    for fn in (normalize_event, normalize_push_event):
        result = _normalize_or_malformed(fn, item)
        if isinstance(result, NormalizedEvent):
            assert result.ticket == result.data["ticket"]
            assert set(result.fingerprint) <= set(result.data["media"])
            for key, value in result.fingerprint.items():
                assert result.data["media"][key] == value
            # The data must survive a JSON round trip unchanged (it is stored as JSON).
            assert json.loads(json.dumps(result.data, allow_nan=False)) == result.data


# --------------------------------------------------------------------------- push


def test_push_message_is_normalized_like_a_poll_item() -> None:
    ev = normalize_push_event(PUSH_MESSAGE, TABLE)

    assert ev.ticket == "4b2afd89-8123-4842-b430-c95fc143b14a"
    assert ev.data["event_type"] == {"code": 5, "name": "Start Up", "category": "other"}
    assert ev.data["severity"] == "minor"
    assert ev.data["location"] == {"lat": 25.047111, "lng": 121.374111}
    assert ev.data["device"] == {
        "cid": "96732f17-b4d1-4b67-97de-3fae29237057",
        "serial_number": "K245A0001234",
    }
    assert ev.data["occurred_at"] == "2024-02-01T00:05:16Z"
    assert ev.data["media"]["has_video"] is False
    assert ev.data["media"]["videos_count"] == 0
    assert ev.data["media"]["uploading"] is None
    # Only what the push carries: a poll's other media fields are not contradicted.
    assert ev.fingerprint == {"videos_count": 0, "has_video": False}


def test_push_with_videos_has_video_and_unknown_code_uses_event_name() -> None:
    message = PUSH_MESSAGE | {
        "event_type": 22,
        "event_name": "Rolling Stop",
        "severity_level": "SEVERE",
        "video": {"count": 2, "capture_mode": ["C_F", "C_R"]},
    }
    ev = normalize_push_event(message, TABLE)
    assert ev.data["event_type"] == {"code": 22, "name": "Rolling Stop", "category": "traffic_sign"}
    assert ev.data["severity"] == "severe"
    assert ev.fingerprint == {"videos_count": 2, "has_video": True}


def test_push_without_ticket_is_malformed() -> None:
    message = {k: v for k, v in PUSH_MESSAGE.items() if k != "ticket"}
    with pytest.raises(MalformedItem, match="missing ticket"):
        normalize_push_event(message, TABLE)


def test_push_with_garbage_gps_has_no_location() -> None:
    message = PUSH_MESSAGE | {"gps": {"lat": "north", "lng": ""}}
    assert normalize_push_event(message, TABLE).data["location"] is None


# --------------------------------------------------------------------------- severity


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "minor"),
        (2, "moderate"),
        (3, "severe"),
        ("1", "minor"),
        ("3", "severe"),
        (3.0, "severe"),
        ("Minor", "minor"),
        ("MODERATE", "moderate"),
        (" severe ", "severe"),
        (0, "unknown"),
        (4, "unknown"),
        (-1, "unknown"),
        ("", "unknown"),
        ("critical", "unknown"),
        (None, "unknown"),
        (True, "unknown"),
        ([3], "unknown"),
        (2.5, "unknown"),
    ],
)
def test_severity_mapping(value: Any, expected: str) -> None:
    assert severity(value) == expected


# --------------------------------------------------------------------------- event types

UPSTREAM_NAMES = [
    ("Harsh Acceleration", "sensor"),
    ("Harsh Braking", "sensor"),
    ("Harsh Cornering", "sensor"),
    ("Impact Driving", "sensor"),
    ("Impact Parking", "sensor"),
    ("FCW", "adas"),
    ("Forward Collision Warning", "adas"),
    ("Tailgating", "adas"),
    ("LDW", "adas"),
    ("Lane Departure Warning", "adas"),
    ("Stop and Go", "adas"),
    ("Distraction", "dms"),
    ("Phoning", "dms"),
    ("Phone Use", "dms"),
    ("Smoking", "dms"),
    ("Drowsiness", "dms"),
    ("Drowsy Driving", "dms"),
    ("Yawning", "dms"),
    ("Seatbelt", "dms"),
    ("No Seat Belt", "dms"),
    ("Camera Covered", "dms"),
    ("Speed Camera Violation", "traffic_sign"),
    ("Rolling Stop", "traffic_sign"),
    ("Speeding", "traffic_sign"),
    ("Stop Sign", "traffic_sign"),
    ("Traffic Sign Violation", "traffic_sign"),
    ("Start Up", "other"),
    ("Panic Button", "other"),
    ("Worldwide", "other"),  # "ldw" inside a word is not LDW
    ("", "other"),
]


@pytest.mark.parametrize(("name", "category"), UPSTREAM_NAMES)
def test_category_from_name(name: str, category: str) -> None:
    assert category_from_name(name) == category


@pytest.mark.parametrize(
    "name", ["harsh braking", "HARSH  BRAKING", "harsh_braking", "HarshBraking", " Harsh-Braking "]
)
def test_category_ignores_case_and_spacing(name: str) -> None:
    assert category_from_name(name) == "sensor"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((1, "Collision XYZ", "Whatever"), ("Impact", "sensor")),
        ((2, None, None), ("Parking", "sensor")),
        ((5, "Phoning", None), ("Start Up", "other")),
        ((22, "LDW", "Harsh Braking"), ("LDW", "adas")),
        ((22, None, "Phoning"), ("Phoning", "dms")),
        ((22, "   ", "Rolling Stop"), ("Rolling Stop", "traffic_sign")),
        ((22, None, None), ("Type 22", "other")),
        ((None, None, None), ("Unknown", "other")),
        ((None, "Tailgating", None), ("Tailgating", "adas")),
        ((4, "Mystery", None), ("Mystery", "other")),
    ],
)
def test_classify_without_overrides(args: tuple[Any, Any, Any], expected: tuple[str, str]) -> None:
    assert TABLE.classify(*args) == expected


def test_builtin_table_holds_only_the_public_codes() -> None:
    assert set(BUILTIN_EVENT_TYPES) == {1, 2, 5}


def test_overrides_win_over_table_and_item() -> None:
    table = EventTypeTable(
        {
            22: EventTypeOverride(name="Lane Departure", category="adas"),
            27: EventTypeOverride(name="Phoning"),  # category from the override's name
            28: EventTypeOverride(category="dms"),  # name still from the item
            1: EventTypeOverride(category="other"),
            2: EventTypeOverride(name="Parking Impact"),  # builtin category stays
        }
    )
    assert table.classify(22, "Harsh Braking", None) == ("Lane Departure", "adas")
    assert table.classify(27, "Harsh Braking", None) == ("Phoning", "dms")
    assert table.classify(28, "Harsh Braking", None) == ("Harsh Braking", "dms")
    assert table.classify(28, None, None) == ("Type 28", "dms")
    assert table.classify(1, None, None) == ("Impact", "other")
    assert table.classify(2, None, None) == ("Parking Impact", "sensor")
    assert table.classify(4, "Harsh Braking", None) == ("Harsh Braking", "sensor")


def test_normalize_uses_overrides() -> None:
    table = EventTypeTable({22: EventTypeOverride(name="LDW", category="adas")})
    ev = normalize_event(FULL_ITEM, table)
    assert ev.data["event_type"] == {"code": 22, "name": "LDW", "category": "adas"}


# --------------------------------------------------------------------------- clips


def _task(state: int, **ack: Any) -> dict[str, Any]:
    return {
        "task_id": "task-1",
        "task_state": state,
        "last_ack_message": {
            "code": None,
            "desc": None,
            "state": "processing",
            "report_at": 1_764_000_100,
            "state_desc": "(2/3)",
            "progress_status": [
                {
                    "camId": "C_F",
                    "state": "Uploading",
                    "report_at": 1_764_000_100,
                    "state_number": 5,
                },
                {
                    "camId": "C_I",
                    "state": "Clipping",
                    "report_at": 1_764_000_100,
                    "state_number": 1,
                },
            ],
        }
        | ack,
        "process_history": [],
    }


CLIP_KW: dict[str, Any] = {
    "serial_number": "K245A0001234",
    "cam_id": "ALL",
    "file_name": "clip-1",
    "target_timestamp": 1_764_000_000,
    "duration_s": 30,
}


@pytest.mark.parametrize(("code", "name"), sorted(TASK_STATES.items()))
def test_clip_data_names_every_task_state(code: int, name: str) -> None:
    data = clip_data(_task(code), **CLIP_KW)
    assert data["state"] == name
    assert data["state_code"] == code
    assert data["task_id"] == "task-1"
    assert data["target_timestamp"] == "2025-11-24T16:00:00Z"
    assert data["cameras"] == [
        {"cam_id": "C_F", "state": "Uploading", "state_number": 5},
        {"cam_id": "C_I", "state": "Clipping", "state_number": 1},
    ]
    assert data["error"] is None
    assert data["videos"] == []
    assert data["ticket"] is None


def test_clip_terminal_states_and_types() -> None:
    assert {2, 3, 6} == CLIP_TERMINAL_STATES
    assert clip_type(2) == "clip.completed"
    assert clip_type(6) == "clip.completed"
    assert clip_type(3) == "clip.failed"
    assert [clip_type(s) for s in (0, 1, 4, 5, None)] == ["clip.updated"] * 5


def test_clip_error_from_the_ack_code_uses_the_seed_description() -> None:
    data = clip_data(_task(3, code="D_E20003", desc="busy"), **CLIP_KW)
    assert data["state"] == "failed"
    assert data["error"] == {"code": "D_E20003", "description": "Clip process is busy"}


def test_clip_success_code_is_not_an_error() -> None:
    assert clip_data(_task(2, code="D_S00000"), **CLIP_KW)["error"] is None


def test_clip_unknown_error_code_falls_back_to_the_vendor_desc() -> None:
    data = clip_data(_task(3, code="D_E20099", desc="Something odd"), **CLIP_KW)
    assert data["error"] == {"code": "D_E20099", "description": "Something odd"}


def test_clip_error_from_a_camera_entry_or_state_number() -> None:
    task = _task(6)
    task["last_ack_message"]["progress_status"][1] = {
        "camId": "C_I",
        "state": "Failed",
        "state_number": 3,
        "code": "D_E20009",
    }
    assert clip_data(task, **CLIP_KW)["error"] == {
        "code": "D_E20009",
        "description": CAMERA_ERRORS["D_E20009"],
    }

    expired = _task(3)
    expired["last_ack_message"]["progress_status"][0]["state_number"] = 7
    assert clip_data(expired, **CLIP_KW)["error"] == {
        "code": "D_E20010",
        "description": "Upload time expired",
    }


def test_clip_error_from_process_history() -> None:
    task = _task(3)
    task["process_history"] = [{"code": "D_E20001", "desc": None}, {"code": None}]
    assert clip_data(task, **CLIP_KW)["error"] == {
        "code": "D_E20001",
        "description": "Video is not existing",
    }


def test_clip_videos_and_ticket() -> None:
    videos: list[dict[str, Any]] = [
        {
            "cam_id": "C_F",
            "url": "https://v.example.com/f.mp4",
            "duration": 30,
            "expires_at": 1_764_086_400,
        },
        {
            "cam_id": "C_I",
            "url": "https://v.example.com/i.mp4",
            "expires_at": "2025-11-25T16:00:00+00:00",
        },
        {"cam_id": "C_R"},  # no URL yet: left out
    ]
    task = _task(2) | {"ticket": "tk-from-task"}
    data = clip_data(task, **CLIP_KW, videos=videos)
    assert data["videos"] == [
        {
            "cam_id": "C_F",
            "url": "https://v.example.com/f.mp4",
            "expires_at": "2025-11-25T16:00:00Z",
        },
        {
            "cam_id": "C_I",
            "url": "https://v.example.com/i.mp4",
            "expires_at": "2025-11-25T16:00:00Z",
        },
    ]
    assert data["ticket"] == "tk-from-task"
    assert clip_data(task, **CLIP_KW, ticket="explicit")["ticket"] == "explicit"


def test_clip_data_before_any_task_result_is_upcoming() -> None:
    data = clip_data({"task_id": "t-9"}, **CLIP_KW)
    assert (data["state"], data["state_code"], data["cameras"], data["error"]) == (
        "upcoming",
        0,
        [],
        None,
    )
    assert clip_data({"task_state": 42}, **CLIP_KW)["state"] is None


def test_upload_data_from_storage_item() -> None:
    item = {
        "task_id": "up-1",
        "task_state": 5,
        "device_cid": "cid-1",
        "event_name": "Manual upload",
        "expired": False,
        "left_days": 12,
        "lat": 25.1,
        "lng": 121.2,
        "video_id": 881,
        "tag": 0,
        "trip_id": 77,
        "ticket": "tk-1",
        "last_ack_message": {
            "code": None,
            "progress_status": [{"camId": "C_F", "state_number": 5}],
        },
    }
    data = upload_data(item)
    assert data["task_id"] == "up-1"
    assert data["state"] == "uploading"
    assert data["state_code"] == 5
    assert data["device_cid"] == "cid-1"
    assert data["event_name"] == "Manual upload"
    assert data["video_id"] == "881"
    assert data["expired"] is False
    assert data["left_days"] == 12
    assert data["location"] == {"lat": 25.1, "lng": 121.2}
    assert data["trip_id"] == 77
    assert data["ticket"] == "tk-1"
    assert data["cameras"] == [{"cam_id": "C_F", "state": None, "state_number": 5}]
    assert data["serial_number"] is None
    assert data["target_timestamp"] is None


# --------------------------------------------------------------------------- report

REPORT = {
    "summary": {
        "event_category": [
            {"category": "Sensor Event", "count": 12},
            {"category": "AI(ADAS) Event", "count": 5},
            {"category": "AI(DMS) Event", "count": 3},
            {"category": "Traffic sign", "count": 2},
            {"category": "Mystery", "count": 1},
        ],
        "trip": {
            "total_distance": 1234.5,
            "total_idling": 600,
            "total_time": 86400,
            "total_trips": 9,
        },
    },
    "trend": [
        {
            "trend_type": "Sensor Event",
            "events": [
                {
                    "date": "2025-11-23",
                    "types": [
                        {"type": 1, "count": 2},
                        {"type": 22, "count": 1, "type_name": "Harsh Braking"},
                    ],
                    "severity": {"lv_1": 1, "lv_2": 1, "lv_3": 1},
                }
            ],
        },
        {"trend_type": "AI(DMS) Event", "events": []},
    ],
}


def test_report_data_normalizes_categories() -> None:
    data = report_data(
        REPORT, since=1_763_856_000, until=1_763_942_400, tz="Asia/Taipei", table=TABLE
    )
    assert data["since"] == "2025-11-23T00:00:00Z"
    assert data["until"] == "2025-11-24T00:00:00Z"
    assert data["tz"] == "Asia/Taipei"
    assert data["categories"] == {"sensor": 12, "adas": 5, "dms": 3, "traffic_sign": 2, "other": 1}
    assert data["total_events"] == 23
    assert data["trips"] == {
        "total_trips": 9,
        "total_distance": 1234.5,
        "total_time": 86400,
        "total_idling": 600,
    }
    assert [t["category"] for t in data["trend"]] == ["sensor", "dms"]
    day = data["trend"][0]["events"][0]
    assert day["types"] == [
        {"code": 1, "name": "Impact", "category": "sensor", "count": 2},
        {"code": 22, "name": "Harsh Braking", "category": "sensor", "count": 1},
    ]
    assert day["severity"] == {"minor": 1, "moderate": 1, "severe": 1}


def test_report_data_reads_a_data_wrapper_and_tolerates_missing_pieces() -> None:
    wrapped = report_data({"data": REPORT}, since=0, until=1, tz="UTC", table=TABLE)
    assert wrapped["categories"]["sensor"] == 12

    empty = report_data({}, since=0, until=1, tz="UTC", table=TABLE)
    assert empty["categories"] == dict.fromkeys(
        ("sensor", "adas", "dms", "traffic_sign", "other"), 0
    )
    assert empty["trips"] == dict.fromkeys(
        ("total_trips", "total_distance", "total_time", "total_idling"), None
    )
    assert empty["trend"] == []

    junk = report_data(
        {"summary": {"event_category": "nope", "trip": [1]}, "trend": [None, {"events": [1]}]},
        since=0,
        until=1,
        tz="UTC",
        table=TABLE,
    )
    assert junk["total_events"] == 0
    assert junk["trend"] == [{"category": "other", "events": []}]


# --------------------------------------------------------------------------- vendor models


def test_event_item_model_reads_loose_values_and_keeps_unknown_fields() -> None:
    item = EventItem.model_validate(
        FULL_ITEM | {"lat": "25.5", "type": "22", "expired": 1, "driver_name": ["x"]}
    )
    assert item.lat == 25.5
    assert item.type == 22
    assert item.expired is True
    assert item.driver_name is None  # wrong kind → None, not a validation error
    assert item.asset_info is not None
    assert item.asset_info.has_video is True
    assert item.model_extra == {"some_future_vendor_field": {"nested": [1, 2, 3]}}
    assert EventItem.model_validate({}).ticket is None


def test_push_models_decode_the_vendor_sample() -> None:
    body = VendorPush.model_validate(
        {
            "type": "Notification",
            "hookName": "EVENT_TRIGGERED",
            "messageId": "m-1",
            "message": json.dumps(PUSH_MESSAGE),
            "signature": "sig",
            "kid": "k1",
        }
    )
    assert body.hookName == "EVENT_TRIGGERED"
    assert body.message is not None
    msg = PushMessage.model_validate_json(body.message)
    assert msg.gps is not None
    assert msg.gps.lat == "25.047111"
    assert msg.severity_level == "Minor"
    assert msg.video is not None
    assert msg.video.count == 0
    assert msg.snapshots is not None
    assert msg.snapshots.capture_mode == ["C_F", "C_I"]
    assert msg.nfc is not None
    assert msg.nfc.id == "ee565d"
    numeric = PushMessage.model_validate({"gps": {"lat": 25.5}, "severity_level": "3", "video": 5})
    assert numeric.gps is not None
    assert numeric.gps.lat == "25.5"
    assert numeric.severity_level == 3
    assert numeric.video is None


def test_task_models_tolerate_junk() -> None:
    task = TaskResult.model_validate(
        {
            "task_id": "t-1",
            "task_state": "2",
            "last_ack_message": {
                "code": "D_S00000",
                "progress_status": [{"camId": "C_F", "state_number": "6"}, "junk", None],
            },
            "process_history": "not a list",
            "ticket": "tk",
        }
    )
    assert task.task_state == 2
    assert task.last_ack_message is not None
    assert [p.camId for p in task.last_ack_message.progress_status] == ["C_F"]
    assert task.last_ack_message.progress_status[0].state_number == 6
    assert task.process_history == []
    storage = StorageItem.model_validate({"video_id": 881, "lat": "1.5", "left_days": "3"})
    assert (storage.video_id, storage.lat, storage.left_days) == ("881", 1.5, 3)
    detail = VideoDetail.model_validate(
        {"videos": [{"cam_id": "C_F", "url": "https://v/x", "duration": "30", "expires_at": 5}, 1]}
    )
    assert detail.video_dicts() == [
        {"cam_id": "C_F", "url": "https://v/x", "duration": 30.0, "expires_at": 5}
    ]


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(ITEM_KEYS), JSON_VALUES, max_size=10))
def test_vendor_models_never_fail_on_content(item: dict[str, Any]) -> None:
    for model in (EventItem, PushMessage, TaskResult, StorageItem, VideoDetail):
        model.model_validate(item)


def test_severity_mapping_is_configurable() -> None:
    table = EventTypeTable({}, {"4": "severe", "Critical": "severe", "1": "moderate"})
    assert table.severity_levels == {"4": "severe", "critical": "severe", "1": "moderate"}
    assert severity(4, table.severity_levels) == "severe"
    assert severity("CRITICAL", table.severity_levels) == "severe"
    assert severity(1, table.severity_levels) == "moderate"  # overrides the built-in
    assert severity(3, table.severity_levels) == "severe"  # built-in still applies
    item = {"ticket": "t-1", "timestamp": 1_700_000_000, "type": 4, "severity_level": 4}
    assert normalize_event(item, table).data["severity"] == "severe"
    push = {
        "ticket": "t-2",
        "timestamp": 1_700_000_000,
        "event_type": 4,
        "severity_level": "Critical",
    }
    assert normalize_push_event(push, table).data["severity"] == "severe"
