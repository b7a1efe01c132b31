"""Every notification the code builds validates against the shipped JSON Schema."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from importlib import resources
from typing import Any

import pytest
from envelope_schema import EnvelopeInvalid, load_schema, validate_envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.dedup import decide, event_data_with_revision
from bridge.event_types import EventTypeTable
from bridge.normalize import (
    TASK_STATES,
    MalformedItem,
    NormalizedEvent,
    clip_data,
    clip_type,
    normalize_event,
    normalize_push_event,
    report_data,
    upload_data,
)
from bridge.notifications import build_notification
from bridge.settings import NOTIFICATION_TYPES

TABLE = EventTypeTable({})
NOW = 1_764_000_003.12
BASE = "https://fleet.example.com"

# Items shaped like the simulator's: the four categories, severities, late media.
SIM_ITEMS: list[dict[str, Any]] = [
    {
        "asset_info": {"uploading": True, "has_video": False},
        "car_id": 101,
        "device_cid": "96732f17-b4d1-4b67-97de-3fae29237057",
        "driver_id": 7,
        "driver_name": "Jane Doe",
        "expired": False,
        "expiry": 1_766_592_000,
        "lat": 25.0471,
        "lng": 121.3741,
        "severity_level": sev,
        "ticket": f"4b2afd89-8123-4842-b430-c95fc143b1{i:02d}",
        "ticket_linked": None,
        "timestamp": 1_764_000_000 - 60 * i,
        "trip_id": 456 + i,
        "type": code,
        "type_name": name,
        "name": name,
        "videos_count": 0,
        "videos_total_count": 2,
        "uuid": f"uuid-{i}",
    }
    for i, (code, name, sev) in enumerate(
        [
            (1, "Impact", 3),
            (22, "Harsh Braking", 2),
            (4, "FCW", 1),
            (30, "Phoning", 0),
            (31, "Rolling Stop", 2),
            (5, "Start Up", 1),
            (99, None, None),
        ]
    )
]


def _envelope(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return build_notification(type_, data, base_url=BASE, now=NOW).envelope()


def _event_envelopes(ev: NormalizedEvent) -> list[dict[str, Any]]:
    created = decide(None, ev.ticket, ev.fingerprint, NOW)
    out = [
        _envelope(
            "event.created", event_data_with_revision(ev.data, created.revision, created.changed)
        )
    ]
    changed = dict.fromkeys(ev.fingerprint, "something else")
    upd = decide(created.ticket_state, ev.ticket, changed, NOW + 1)
    if upd.kind == "updated":
        out.append(_envelope("event.updated", event_data_with_revision(ev.data, 2, upd.changed)))
    return out


# --------------------------------------------------------------------------- the schema file


def test_schema_is_package_data_and_a_valid_2020_12_schema() -> None:
    path = resources.files("bridge").joinpath("schemas/notification.schema.json")
    assert path.is_file()
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert schema["properties"]["type"]["enum"] == list(NOTIFICATION_TYPES)
    # load_schema hands out copies.
    schema["title"] = "changed"
    assert load_schema()["title"] != "changed"

    import jsonschema  # type: ignore[import-untyped]  # a dev dependency: never skipped

    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_vendor_model_in_the_runtime_package_is_used_at_run_time() -> None:
    # Models only the tests need live in tests/vendor_models.py.
    import ast
    from pathlib import Path

    import bridge
    import bridge.upstream.models as models

    package = Path(bridge.__file__).parent
    others = "\n".join(p.read_text() for p in package.rglob("*.py") if p != Path(models.__file__))
    tree = ast.parse(Path(models.__file__).read_text())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    unused = [c for c in classes if c != "VendorModel" and c not in others]
    assert not unused, f"only the tests use {unused}"


def test_the_runtime_package_imports_no_test_tooling() -> None:
    # Every module of the installed package, the simulator and the doc examples
    # included: none may need a dev-only dependency or aiohttp's test utilities.
    code = (
        "import importlib, pkgutil, sys, bridge\n"
        "for m in pkgutil.walk_packages(bridge.__path__, 'bridge.'):\n"
        "    if m.name != 'bridge.__main__':  # that one runs the command line\n"
        "        importlib.import_module(m.name)\n"
        "bad = {'jsonschema', 'aiohttp.test_utils', 'pytest', 'hypothesis'} & set(sys.modules)\n"
        "sys.exit(', '.join(sorted(bad)) or 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()


# --------------------------------------------------------------------------- valid notifications


@pytest.mark.parametrize("item", SIM_ITEMS, ids=lambda i: str(i["type"]))
def test_events_from_simulator_like_items_validate(item: dict[str, Any]) -> None:
    envelopes = _event_envelopes(normalize_event(item, TABLE))
    assert [e["type"] for e in envelopes] == ["event.created", "event.updated"]
    for envelope in envelopes:
        validate_envelope(envelope)
        # What targets receive is the JSON text: validate that too.
        validate_envelope(json.loads(json.dumps(envelope)))


def test_push_event_validates() -> None:
    message = {
        "device_sn": "K245A0001234",
        "device_cid": "cid-1",
        "gps": {"lat": "25.047111", "lng": "121.374111", "alt": "0.0"},
        "timestamp": 1706745916,
        "event_type": 5,
        "event_name": "Start Up",
        "ticket": "4b2afd89-8123-4842-b430-c95fc143b14a",
        "severity_level": "Minor",
        "video": {"count": 1, "capture_mode": ["C_F"]},
    }
    for envelope in _event_envelopes(normalize_push_event(message, TABLE)):
        validate_envelope(envelope)


def test_sparse_event_validates() -> None:
    ev = normalize_event({"ticket": "t", "timestamp": 0}, TABLE)
    (envelope,) = _event_envelopes(ev)  # no media fingerprint: no update possible
    validate_envelope(envelope)


def _task(state: int) -> dict[str, Any]:
    return {
        "task_id": "task-1",
        "task_state": state,
        "ticket": "tk-1" if state in (2, 6) else None,
        "last_ack_message": {
            "code": "D_E20002" if state in (3, 6) else "D_S00000",
            "desc": None,
            "state": "x",
            "report_at": 1_764_000_100,
            "state_desc": "(2/3)",
            "progress_status": [
                {"camId": "C_F", "state": "Success", "report_at": 1, "state_number": 6},
                {"camId": "C_I", "state": None, "report_at": None, "state_number": None},
            ],
        },
        "process_history": [{"code": None}],
    }


@pytest.mark.parametrize("state", sorted(TASK_STATES))
def test_clip_notifications_validate_in_every_state(state: int) -> None:
    videos = [
        {"cam_id": "C_F", "url": "https://v/x.mp4", "duration": 30, "expires_at": 1_764_086_400}
    ]
    data = clip_data(
        _task(state),
        serial_number="K245A0001234",
        cam_id="ALL",
        file_name="clip-1",
        target_timestamp=1_764_000_000,
        duration_s=30,
        videos=videos if state == 2 else None,
    )
    for type_ in {"clip.requested", clip_type(state)}:
        validate_envelope(_envelope(type_, data))


def test_clip_requested_before_a_task_result_validates() -> None:
    data = clip_data(
        {"task_id": "t"},
        serial_number="SN",
        cam_id="C_F",
        file_name="f",
        target_timestamp=1,
        duration_s=1,
    )
    validate_envelope(_envelope("clip.requested", data))
    data = clip_data(
        {}, serial_number="SN", cam_id="C_F", file_name="f", target_timestamp=1, duration_s=1
    )
    validate_envelope(_envelope("clip.failed", data))


def test_upload_notifications_validate() -> None:
    full = {
        "task_id": "up-1",
        "task_state": 3,
        "device_cid": "cid",
        "event_name": "Manual",
        "expired": True,
        "left_days": 0,
        "lat": "25.1",
        "lng": "121.2",
        "video_id": 881,
        "tag": 0,
        "trip_id": 77,
        "ticket": None,
        "last_ack_message": {
            "code": "D_E20010",
            "progress_status": [{"camId": "C_F", "state_number": 7}],
        },
    }
    validate_envelope(_envelope("upload.updated", upload_data(full)))
    validate_envelope(_envelope("upload.updated", upload_data({})))


def test_report_notifications_validate() -> None:
    report = {
        "summary": {
            "event_category": [
                {"category": "Sensor Event", "count": 3},
                {"category": "AI(DMS) Event", "count": 1},
            ],
            "trip": {
                "total_distance": 10.5,
                "total_idling": 0,
                "total_time": 3600,
                "total_trips": 2,
            },
        },
        "trend": [
            {
                "trend_type": "Traffic sign",
                "events": [
                    {
                        "date": "2025-11-23",
                        "types": [{"type": 31, "count": 1}],
                        "severity": {"lv_2": 1},
                    }
                ],
            }
        ],
    }
    for r in (report, {}, {"summary": None, "trend": "x"}):
        data = report_data(r, since=NOW - 86400, until=NOW, tz="UTC", table=TABLE)
        validate_envelope(_envelope("report.safety", data))


def test_bridge_test_validates() -> None:
    validate_envelope(
        _envelope("bridge.test", {"target": "ops-webhook", "message": "test from fleet-bridge"})
    )


# --------------------------------------------------------------------------- properties

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**66), max_value=2**66)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
WILD = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
NUMERIC = st.integers(-1000, 2_000_000_000) | st.floats(-200, 200) | st.floats(-200, 200).map(str)
VALID_ISH_ITEM = st.fixed_dictionaries(
    {
        "ticket": st.text(min_size=1, max_size=36).filter(str.strip),
        "timestamp": st.integers(0, 4_102_444_800) | st.integers(0, 4_102_444_800).map(str),
    },
    optional={
        "type": st.integers(-10, 10**6) | st.none(),
        "type_name": WILD,
        "name": WILD,
        "severity_level": WILD | st.integers(0, 4),
        "lat": NUMERIC | WILD,
        "lng": NUMERIC | WILD,
        "car_id": NUMERIC | WILD,
        "driver_id": NUMERIC | WILD,
        "driver_name": WILD,
        "device_cid": WILD,
        "device_sn": WILD,
        "ticket_linked": WILD,
        "trip_id": NUMERIC | WILD,
        "asset_info": st.fixed_dictionaries({}, optional={"has_video": WILD, "uploading": WILD})
        | WILD,
        "videos_count": NUMERIC | WILD,
        "videos_total_count": NUMERIC | WILD,
        "expired": WILD,
        "expiry": NUMERIC | WILD,
        "gps": st.fixed_dictionaries({}, optional={"lat": NUMERIC, "lng": NUMERIC}) | WILD,
        "video": st.fixed_dictionaries({}, optional={"count": NUMERIC | WILD}) | WILD,
        "event_type": st.integers(-10, 10**6),
        "event_name": WILD,
        "unknown_vendor_field": WILD,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALID_ISH_ITEM)
def test_every_normalized_event_builds_a_valid_notification(item: dict[str, Any]) -> None:
    for fn in (normalize_event, normalize_push_event):
        try:
            ev = fn(item, TABLE)
        except MalformedItem:
            continue
        for envelope in _event_envelopes(ev):
            validate_envelope(envelope)


@settings(max_examples=150, deadline=None)
@given(WILD, st.integers(0, 7))
def test_clip_upload_report_builders_always_validate(junk: Any, state: int) -> None:
    task = junk if isinstance(junk, dict) else {"task_state": state, "last_ack_message": junk}
    data = clip_data(
        task,
        serial_number="SN",
        cam_id="C_F",
        file_name="f",
        target_timestamp=1_764_000_000,
        duration_s=30,
        videos=junk if isinstance(junk, list) else None,
    )
    validate_envelope(_envelope("clip.updated", data))
    validate_envelope(_envelope("upload.updated", upload_data(task)))
    report = report_data(
        junk if isinstance(junk, dict) else {"trend": junk}, since=0, until=1, tz="UTC", table=TABLE
    )
    validate_envelope(_envelope("report.safety", report))


# --------------------------------------------------------------------------- rejections


def _good() -> dict[str, Any]:
    envelopes = _event_envelopes(normalize_event(SIM_ITEMS[0], TABLE))
    return copy.deepcopy(envelopes[0])


def test_good_envelope_passes() -> None:
    validate_envelope(_good())


def _mutations() -> list[tuple[str, Any, str]]:
    def set_(path: str, value: Any) -> Any:
        def apply(env: dict[str, Any]) -> None:
            *parents, last = path.split(".")
            node = env
            for p in parents:
                node = node[p]
            node[last] = value

        return apply

    def delete(path: str) -> Any:
        def apply(env: dict[str, Any]) -> None:
            *parents, last = path.split(".")
            node = env
            for p in parents:
                node = node[p]
            del node[last]

        return apply

    return [
        ("bad id prefix", set_("id", "evt_01JD0000000000000000000000"), "id"),
        ("id with I", set_("id", "ntf_01JD00000000000000000000I0"), "id"),
        ("short id", set_("id", "ntf_01JD"), "id"),
        ("extra envelope key", set_("extra", 1), "(envelope)"),
        ("version 2", set_("version", 2), "version"),
        ("unknown type", set_("type", "event.deleted"), "type"),
        ("created_at without Z", set_("created_at", "2026-11-24T10:00:03+00:00"), "created_at"),
        ("created_at not a time", set_("created_at", "yesterday"), "created_at"),
        ("missing data", delete("data"), "(envelope)"),
        ("missing source", delete("source"), "(envelope)"),
        ("bad source system", set_("source.system", "other"), "source.system"),
        ("bad severity", set_("data.severity", "critical"), "data.severity"),
        ("bad category", set_("data.event_type.category", "misc"), "data.event_type.category"),
        ("created with revision 2", set_("data.revision", 2), "data.revision"),
        ("created with changes", set_("data.changed", ["media.has_video"]), "data.changed"),
        ("unknown changed path", set_("data.changed", ["driver.name"]), "data.changed[0]"),
        ("extra data key", set_("data.speed", 3), "data"),
        ("missing data key", delete("data.media"), "data"),
        ("string lat", set_("data.location", {"lat": "25", "lng": 1.0}), "data.location"),
        ("bad occurred_at", set_("data.occurred_at", 1_764_000_000), "data.occurred_at"),
        ("bad media count", set_("data.media.videos_count", -1), "data.media.videos_count"),
    ]


@pytest.mark.parametrize(("label", "mutate", "path"), _mutations(), ids=lambda v: str(v)[:30])
def test_bad_envelopes_are_rejected_naming_the_path(label: str, mutate: Any, path: str) -> None:
    envelope = _good()
    mutate(envelope)
    with pytest.raises(EnvelopeInvalid) as exc:
        validate_envelope(envelope)
    assert any(p.startswith(f"{path}:") for p in exc.value.problems), (label, exc.value.problems)
    assert "does not match the schema" in str(exc.value)


def test_event_updated_needs_a_revision_above_one_and_changes() -> None:
    envelope = _good()
    envelope["type"] = "event.updated"
    with pytest.raises(EnvelopeInvalid) as exc:
        validate_envelope(envelope)
    paths = {p.split(":")[0] for p in exc.value.problems}
    assert paths == {"data.revision", "data.changed"}


def test_clip_data_under_an_event_type_is_rejected() -> None:
    data = clip_data(
        {}, serial_number="SN", cam_id="C_F", file_name="f", target_timestamp=1, duration_s=1
    )
    with pytest.raises(EnvelopeInvalid):
        validate_envelope(_envelope("event.created", data))
    with pytest.raises(EnvelopeInvalid):
        validate_envelope(_envelope("upload.updated", data))  # uploads carry more fields


def test_non_object_is_rejected() -> None:
    with pytest.raises(EnvelopeInvalid, match="is not of type 'object'"):
        validate_envelope([])
