"""Storm control decisions (bridge/storm.py): pure, no event loop; and its config checks."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from test_cli import GOOD, run_cli, write_config

from bridge import storm
from bridge.clock import utc_iso
from bridge.notifications import Notification, build_notification
from bridge.settings import GroupSettings, InhibitRule, MuteWindow

T0 = 1_764_000_000.0


def ev(vehicle: int, at: float, severity: str = "minor", name: str = "LDW") -> Notification:
    data = {
        "ticket": f"t-{vehicle}-{at}",
        "severity": severity,
        "occurred_at": utc_iso(at),
        "vehicle": {"id": vehicle},
        "event_type": {"code": 1, "name": name, "category": "adas"},
    }
    return build_notification("event.created", data, base_url="https://x", now=at)


# -- grouping ------------------------------------------------------------------------------

GROUP = GroupSettings(by=["vehicle.id"], interval_s=300)


def test_a_closed_key_sends_at_once_and_later_members_join_until_the_interval() -> None:
    first = storm.admit(None, T0, GROUP)
    assert first.send
    assert first.state == storm.GroupState(T0, None)
    second = storm.admit(first.state, T0 + 10, GROUP)
    assert not second.send
    assert second.state.flush_at == T0 + 300
    third = storm.admit(second.state, T0 + 20, GROUP)
    assert not third.send
    assert third.state.flush_at == T0 + 300
    # No send for the key within interval_s: the group has ended, a new one starts.
    assert storm.admit(storm.GroupState(T0, None), T0 + 300, GROUP).send


def test_wait_s_lets_the_first_wait_for_company() -> None:
    group = GroupSettings(by=["vehicle.id"], wait_s=30, interval_s=300)
    first = storm.admit(None, T0, group)
    assert not first.send
    assert first.state == storm.GroupState(None, T0 + 30)
    assert storm.admit(first.state, T0 + 5, group).state.flush_at == T0 + 30


@given(
    st.lists(st.floats(min_value=0, max_value=5000, allow_nan=False), min_size=1, max_size=40),
    st.floats(min_value=0, max_value=120, allow_nan=False),
    st.floats(min_value=1, max_value=900, allow_nan=False),
)
def test_admission_never_sends_twice_within_the_interval(
    gaps: list[float], wait_s: float, interval_s: float
) -> None:
    """Between two sends of a key at least interval_s pass; nothing waits past its flush."""
    group = GroupSettings(by=["vehicle.id"], wait_s=wait_s, interval_s=interval_s)
    state: storm.GroupState | None = None
    now = T0
    sends: list[float] = []
    for gap in sorted(gaps):
        now = T0 + gap
        if state is not None and state.flush_at is not None and state.flush_at <= now:
            sends.append(state.flush_at)  # the flush runs when due
            state = storm.GroupState(state.flush_at, None)
        admission = storm.admit(state, now, group)
        if admission.send:
            sends.append(now)
        else:
            assert admission.state.flush_at is not None
            assert admission.state.flush_at >= now
        state = admission.state
    assert all(b - a >= min(interval_s, wait_s) - 1e-6 for a, b in itertools.pairwise(sends))


def test_group_data_lists_the_oldest_first_and_counts_all() -> None:
    members = [
        ev(1, T0 + i, "severe" if i == 2 else "minor", "FCW" if i else "LDW") for i in range(5)
    ]
    data = storm.group_data("grouped", {"vehicle.id": 1}, list(reversed(members)), max_items=3)
    assert data["count"] == 5
    assert data["truncated"] == 2
    assert [i["notification_id"] for i in data["items"]] == [m.id for m in members[:3]]
    assert data["items"][0] == {
        "notification_id": members[0].id,
        "type": "event.created",
        "data": members[0].data,
    }
    assert data["by_severity"] == {"minor": 4, "severe": 1}
    assert data["by_event_type"] == {"LDW": 1, "FCW": 4}
    assert (data["first_occurred_at"], data["last_occurred_at"]) == (utc_iso(T0), utc_iso(T0 + 4))


def test_group_keys_are_canonical() -> None:
    a = storm.encode_key(storm.key_of(["vehicle.id", "driver.id"], {"vehicle": {"id": 1}}))
    b = storm.encode_key({"driver.id": None, "vehicle.id": 1})
    assert a == b
    assert storm.decode_key(a) == {"vehicle.id": 1, "driver.id": None}


# -- inhibition ------------------------------------------------------------------------------

RULE = InhibitRule.model_validate(
    {
        "when": {"min_severity": "severe"},
        "suppress": {"max_severity": "moderate"},
        "equal": ["vehicle.id"],
        "window_s": 120,
    }
)


def test_a_minor_event_near_a_severe_one_of_the_same_vehicle_is_inhibited() -> None:
    severe = ev(1, T0, "severe")
    assert storm.inhibited([RULE], ev(1, T0 + 60), [severe])
    assert storm.inhibited([RULE], ev(1, T0 - 120), [severe])  # before it, too
    assert not storm.inhibited([RULE], ev(2, T0 + 60), [severe])  # another vehicle
    assert not storm.inhibited([RULE], ev(1, T0 + 121), [severe])  # outside the window
    assert not storm.inhibited([RULE], ev(1, T0 + 1, "severe"), [severe])  # matches `when`
    moderate = ev(1, T0 + 1, "moderate")
    assert storm.inhibited([RULE], moderate, [severe])  # max_severity is inclusive
    assert not storm.inhibited([RULE], ev(1, T0 + 1), [ev(1, T0, "moderate")])


def test_inhibit_window_is_the_widest_applicable_rule() -> None:
    wide = RULE.model_copy(update={"window_s": 600})
    assert storm.inhibit_window([RULE, wide], ev(1, T0)) == (T0 - 600, T0 + 600)
    assert storm.inhibit_window([RULE], ev(1, T0, "severe")) is None


# -- quiet hours -------------------------------------------------------------------------------


def mute(**kw: Any) -> MuteWindow:
    return MuteWindow.model_validate({"from": "22:00", "to": "06:00", **kw})


def at(tz: str, *args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


def test_a_window_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    friday_only = mute(tz="America/Chicago", days=["fri"])
    # 2026-11-27 is a Friday.
    assert storm.window_active(friday_only, at("America/Chicago", 2026, 11, 27, 22, 0))
    assert storm.window_active(friday_only, at("America/Chicago", 2026, 11, 28, 5, 59))
    assert not storm.window_active(friday_only, at("America/Chicago", 2026, 11, 28, 6, 0))
    assert not storm.window_active(friday_only, at("America/Chicago", 2026, 11, 27, 3, 0))
    assert not storm.window_active(friday_only, at("America/Chicago", 2026, 11, 28, 22, 30))
    # The zone counts, not UTC: 23:00 in Chicago is 05:00 UTC.
    every_day = mute(tz="America/Chicago")
    assert storm.window_active(every_day, at("UTC", 2026, 11, 28, 5, 0))
    assert not storm.window_active(every_day, at("UTC", 2026, 11, 28, 13, 0))


def test_muted_applies_to_the_listed_types_only() -> None:
    window = mute(tz="UTC", types=["event.created"])
    night = at("UTC", 2026, 11, 27, 23, 0)
    assert storm.muted([window], "event.created", night)
    assert not storm.muted([window], "clip.completed", night)
    assert not storm.muted([window], "event.group", night)
    assert storm.any_muted([window], night)


@given(st.integers(min_value=0, max_value=24 * 60 - 1), st.integers(0, 24 * 60 - 1))
def test_a_same_day_window_is_exactly_from_to(start: int, minute: int) -> None:
    end = min(start + 90, 24 * 60 - 1)
    if end == start:
        return
    window = mute(
        tz="UTC",
        **{"from": f"{start // 60:02d}:{start % 60:02d}"},
        to=f"{end // 60:02d}:{end % 60:02d}",
    )
    ts = datetime(2026, 11, 25, minute // 60, minute % 60, tzinfo=UTC).timestamp()
    assert storm.window_active(window, ts) == (start <= minute < end)


# -- configuration ---------------------------------------------------------------------------


def test_check_rejects_bad_storm_control_with_exit_2_and_dotted_paths(tmp_path: Path) -> None:
    hook = dict(GOOD["targets"][0])  # type: ignore[index]
    hook |= {
        "group": {"by": ["vehicle.idx"], "interval_s": 0},
        "inhibit": [
            {
                "when": {"min_severity": "severe"},
                "suppress": {"max_severity": "worst"},
                "equal": ["nope"],
            }
        ],
        "mute": [{"tz": "Mars/Olympus", "days": ["mon", "funday"], "from": "25:00", "to": "6am"}],
    }
    cfg = GOOD | {"targets": [hook]}
    out = run_cli(
        "check", "--config", str(write_config(tmp_path, cfg)), env={"TEST_FLEET_KEY": "k"}
    )
    assert out.returncode == 2, out.stderr
    paths = {line.split(":")[0] for line in out.stderr.strip().splitlines()}
    assert paths == {
        "targets[0].group.by",
        "targets[0].group.interval_s",
        "targets[0].inhibit[0].suppress.max_severity",
        "targets[0].inhibit[0].equal",
        "targets[0].mute[0].tz",
        "targets[0].mute[0].days",
        "targets[0].mute[0].from",
        "targets[0].mute[0].to",
    }
    assert "unknown weekday 'funday'" in out.stderr
    assert "unknown path 'vehicle.idx'" in out.stderr


def test_check_shows_storm_control_as_written(tmp_path: Path) -> None:
    hook = dict(GOOD["targets"][0])  # type: ignore[index]
    hook |= {"mute": [{"tz": "America/Chicago", "from": "22:00", "to": "06:00"}]}
    cfg = GOOD | {"targets": [hook]}
    out = run_cli(
        "check", "--config", str(write_config(tmp_path, cfg)), env={"TEST_FLEET_KEY": "k"}
    )
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)["targets"][0]["mute"][0]
    assert (shown["from"], shown["to"]) == ("22:00", "06:00")
    assert shown["days"] == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@pytest.mark.parametrize("path", ["vehicle.id", "driver.id", "event_type.category"])
def test_known_paths_are_accepted(path: str) -> None:
    assert GroupSettings(by=[path]).by == [path]
