"""De-dup decisions and revisions: pure functions over fingerprints."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge.dedup import (
    MEDIA_FIELDS,
    VIDEOS,
    VIDEOS_DUE,
    Decision,
    decide,
    event_data_with_revision,
)
from bridge.event_types import EventTypeTable
from bridge.normalize import normalize_event, normalize_push_event
from bridge.store.base import SeenTicket

TABLE = EventTypeTable({})
T0 = 1_764_000_000.0

POLL_ITEM: dict[str, Any] = {
    "ticket": "tk-1",
    "timestamp": 1_764_000_000,
    "type": 1,
    "severity_level": 3,
    "device_cid": "cid-1",
    "asset_info": {"has_video": False, "uploading": True},
    "videos_count": 0,
    "videos_total_count": 2,
    "expired": False,
    "expiry": 0,
}
PUSH_MESSAGE: dict[str, Any] = {
    "ticket": "tk-1",
    "timestamp": 1_764_000_000,
    "event_type": 1,
    "event_name": "Impact",
    "severity_level": "Severe",
    "device_sn": "SN1",
    "gps": {"lat": "25.0", "lng": "121.0"},
    "video": {"count": 0, "capture_mode": []},
}


def _seen(fingerprint: dict[str, Any], revision: int = 1) -> SeenTicket:
    return SeenTicket(
        ticket="tk-1", revision=revision, fingerprint=fingerprint, first_seen_at=T0, updated_at=T0
    )


def test_media_fields_are_the_spec_fields_in_order() -> None:
    assert MEDIA_FIELDS == (
        "has_video",
        "uploading",
        "videos_count",
        "videos_total_count",
        "expired",
        "expires_at",
    )


def test_first_sighting_is_created_with_revision_one() -> None:
    d = decide(None, "tk-1", {"has_video": False, "videos_count": 0}, T0)
    assert d.kind == "created"
    assert d.notify
    assert d.revision == 1
    assert d.changed == []
    assert d.ticket_state == SeenTicket(
        ticket="tk-1",
        revision=1,
        fingerprint={"has_video": False, "videos_count": 0},
        first_seen_at=T0,
        updated_at=T0,
    )


def test_same_fingerprint_is_a_duplicate() -> None:
    prev = _seen({"has_video": False, "videos_count": 0})
    d = decide(prev, "tk-1", {"has_video": False, "videos_count": 0}, T0 + 30)
    assert d.kind == "duplicate"
    assert not d.notify
    assert d.revision == 1
    assert d.changed == []
    # Nothing new to remember: the stored state is returned as is (no write needed).
    assert d.ticket_state is prev


def test_changed_lists_media_paths_in_field_order() -> None:
    prev = _seen(
        {"expires_at": None, "videos_count": 0, "has_video": False, "uploading": True},
        revision=1,
    )
    new = {
        "uploading": False,
        "has_video": True,
        "videos_count": 1,
        "expires_at": "2025-12-01T00:00:00Z",
    }
    d = decide(prev, "tk-1", new, T0 + 60)
    assert d.kind == "updated"
    assert d.revision == 2
    assert d.changed == [
        "media.has_video",
        "media.uploading",
        "media.videos_count",
        "media.expires_at",
    ]
    assert d.ticket_state.revision == 2
    assert d.ticket_state.fingerprint == new


def test_revision_grows_by_one_per_real_change() -> None:
    d = decide(None, "tk-1", {"videos_count": 0}, T0)
    revisions = [d.revision]
    for i, count in enumerate([0, 1, 1, 2, 2, 2, 3]):
        d = decide(d.ticket_state, "tk-1", {"videos_count": count}, T0 + i)
        revisions.append(d.revision)
    assert revisions == [1, 1, 2, 2, 3, 3, 3, 4]


def test_a_field_absent_from_one_side_is_not_a_change_but_is_remembered() -> None:
    prev = _seen({"has_video": False})
    d = decide(prev, "tk-1", {"videos_count": 3, "expired": False}, T0 + 1)
    assert d.kind == "duplicate"
    assert d.ticket_state.fingerprint == {"has_video": False, "videos_count": 3, "expired": False}
    assert d.ticket_state.revision == 1
    assert d.ticket_state.first_seen_at == T0
    assert d.ticket_state.updated_at == T0 + 1  # new fields were learned: store them

    # The remembered field now counts: a later change to it is an update.
    d2 = decide(d.ticket_state, "tk-1", {"videos_count": 4}, T0 + 2)
    assert (d2.kind, d2.changed, d2.revision) == ("updated", ["media.videos_count"], 2)
    assert d2.ticket_state.fingerprint["has_video"] is False  # kept from before


def test_none_to_value_is_a_change_when_both_sides_carry_the_field() -> None:
    prev = _seen({"expires_at": None})
    d = decide(prev, "tk-1", {"expires_at": "2025-12-01T00:00:00Z"}, T0 + 1)
    assert d.changed == ["media.expires_at"]


def test_non_media_keys_are_ignored() -> None:
    prev = _seen({"has_video": True, "severity": "minor"})
    d = decide(prev, "tk-1", {"has_video": True, "severity": "severe", "junk": 1}, T0 + 1)
    assert d.kind == "duplicate"
    assert d.ticket_state.fingerprint == {"has_video": True}  # stored junk is dropped
    assert d.ticket_state is not prev


def test_poll_after_push_without_real_change_is_a_duplicate() -> None:
    push = normalize_push_event(PUSH_MESSAGE, TABLE)
    poll = normalize_event(POLL_ITEM, TABLE)
    # The push carries two media fields, the poll all six.
    assert set(push.fingerprint) == {"has_video", "videos_count"}
    assert set(poll.fingerprint) == set(MEDIA_FIELDS)

    first = decide(None, push.ticket, push.fingerprint, T0)
    again = decide(first.ticket_state, poll.ticket, poll.fingerprint, T0 + 30)
    assert first.kind == "created"
    assert again.kind == "duplicate"
    assert again.ticket_state.fingerprint == poll.fingerprint

    # Media arrives: the next poll is one update naming exactly what changed.
    later = normalize_event(
        POLL_ITEM | {"asset_info": {"has_video": True, "uploading": False}, "videos_count": 2},
        TABLE,
    )
    upd = decide(again.ticket_state, later.ticket, later.fingerprint, T0 + 60)
    assert upd.kind == "updated"
    assert upd.revision == 2
    assert upd.changed == ["media.has_video", "media.uploading", "media.videos_count"]

    # A late push repeating the new state is a duplicate too.
    late_push = normalize_push_event(PUSH_MESSAGE | {"video": {"count": 2}}, TABLE)
    assert decide(upd.ticket_state, late_push.ticket, late_push.fingerprint, T0 + 90).kind == (
        "duplicate"
    )


def test_poll_then_push_with_fewer_fields_is_a_duplicate() -> None:
    poll = normalize_event(POLL_ITEM, TABLE)
    push = normalize_push_event(PUSH_MESSAGE, TABLE)
    first = decide(None, poll.ticket, poll.fingerprint, T0)
    d = decide(first.ticket_state, push.ticket, push.fingerprint, T0 + 5)
    assert d.kind == "duplicate"
    assert d.ticket_state.fingerprint == poll.fingerprint


FINGERPRINTS = st.dictionaries(
    st.sampled_from(MEDIA_FIELDS),
    st.none() | st.booleans() | st.integers(0, 5) | st.sampled_from(["2025-12-01T00:00:00Z"]),
)


@given(FINGERPRINTS, FINGERPRINTS)
def test_decide_properties(old: dict[str, Any], new: dict[str, Any]) -> None:
    prev = _seen(old, revision=3)
    d = decide(prev, "tk-1", new, T0 + 1)
    assert isinstance(d, Decision)
    common_diff = [f"media.{k}" for k in MEDIA_FIELDS if k in old and k in new and old[k] != new[k]]
    assert d.changed == common_diff
    assert d.revision == (4 if common_diff else 3)
    assert d.kind == ("updated" if common_diff else "duplicate")
    assert d.ticket_state.fingerprint == old | new
    # Seeing the same thing again right after is a duplicate with nothing to store.
    again = decide(d.ticket_state, "tk-1", new, T0 + 2)
    assert again.kind == "duplicate"
    assert again.ticket_state is d.ticket_state


def test_event_data_with_revision_places_fields_and_copies() -> None:
    data = normalize_event(POLL_ITEM, TABLE).data
    before = dict(data)
    out = event_data_with_revision(data, 2, ["media.has_video"])
    assert list(out)[:4] == ["ticket", "linked_ticket", "revision", "changed"]
    assert out["revision"] == 2
    assert out["changed"] == ["media.has_video"]
    assert data == before  # input untouched
    assert "revision" not in data

    # Re-applying replaces, never duplicates.
    again = event_data_with_revision(out, 3, [])
    assert (again["revision"], again["changed"]) == (3, [])
    assert list(again).count("revision") == 1

    bare = event_data_with_revision({"ticket": "x"}, 1, [])
    assert bare == {"ticket": "x", "revision": 1, "changed": []}


# --------------------------------------------------------------------------- media.videos


def test_a_first_camera_set_is_a_change_and_resigned_urls_are_not() -> None:
    prev = _seen({"has_video": True, VIDEOS_DUE: True})  # the first fetch failed
    d = decide(prev, "tk-1", {"has_video": True, VIDEOS: ["C_F", "C_I"], VIDEOS_DUE: False}, T0)
    assert (d.kind, d.revision, d.changed) == ("updated", 2, ["media.videos"])
    assert d.ticket_state.fingerprint == {
        "has_video": True,
        VIDEOS: ["C_F", "C_I"],
        VIDEOS_DUE: False,
    }
    # The same cameras again (new signed URLs are not in the fingerprint): nothing new.
    again = decide(d.ticket_state, "tk-1", {"has_video": True, VIDEOS: ["C_I", "C_F"]}, T0 + 1)
    assert again.kind == "duplicate"


def test_a_changed_camera_set_is_listed_after_the_scalar_fields() -> None:
    prev = _seen({"videos_count": 1, VIDEOS: ["C_F"], VIDEOS_DUE: False})
    new = {"videos_count": 2, VIDEOS: ["C_F", "C_I"], VIDEOS_DUE: False}
    d = decide(prev, "tk-1", new, T0)
    assert d.changed == ["media.videos_count", "media.videos"]


def test_a_sighting_without_a_fetch_keeps_the_known_cameras() -> None:
    prev = _seen({"has_video": True, VIDEOS: ["C_F"], VIDEOS_DUE: False})
    d = decide(prev, "tk-1", {"has_video": True}, T0)
    assert d.kind == "duplicate"
    assert d.ticket_state is prev


def test_an_empty_fetch_is_no_change_and_a_failed_one_is_remembered_quietly() -> None:
    prev = _seen({"has_video": False})
    assert decide(prev, "tk-1", {"has_video": False, VIDEOS: []}, T0).changed == []
    owed = decide(prev, "tk-1", {"has_video": False, VIDEOS_DUE: True}, T0)
    assert (owed.kind, owed.changed) == ("duplicate", [])
    assert owed.ticket_state.fingerprint[VIDEOS_DUE] is True  # stored, but no revision
    # Failing again teaches nothing new: no write.
    assert decide(owed.ticket_state, "tk-1", {VIDEOS_DUE: True}, T0 + 1).ticket_state is (
        owed.ticket_state
    )
