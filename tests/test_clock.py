"""bridge/clock.py: `utc_iso` (RFC 3339 UTC text without building a datetime) and
`FakeClock`'s sleeps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.clock import FakeClock, utc_iso

FIRST, LAST = -62_135_596_800 + 86_400, 253_402_300_799  # 0001-01-02 .. 9999-12-31


def via_datetime(seconds: float, millis: bool) -> str:
    """The obvious, slower way: what utc_iso must always agree with."""
    dt = datetime.fromtimestamp(seconds, tz=UTC)
    text = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )
    return text + (f".{dt.microsecond // 1000:03d}Z" if millis else "Z")


@given(
    st.one_of(
        st.integers(min_value=FIRST, max_value=LAST),
        st.floats(min_value=FIRST, max_value=LAST),
        # Fractions at the microsecond rounding edges, which carry into the second.
        st.integers(min_value=0, max_value=2**33).map(lambda s: s + 0.9999995),
        st.integers(min_value=0, max_value=2**33).map(lambda s: s + 0.0000005),
    ),
    st.booleans(),
)
def test_utc_iso_agrees_with_datetime(seconds: float, millis: bool) -> None:
    assert utc_iso(seconds, millis=millis) == via_datetime(seconds, millis)


@pytest.mark.parametrize(
    ("seconds", "millis", "text"),
    [
        (0, False, "1970-01-01T00:00:00Z"),
        (1_764_000_000.1239, True, "2025-11-24T16:00:00.123Z"),
        (-1.5, True, "1969-12-31T23:59:58.500Z"),
        (-62_135_596_800 + 86_400, False, "0001-01-02T00:00:00Z"),
    ],
)
def test_utc_iso_examples(seconds: float, millis: bool, text: str) -> None:
    assert utc_iso(seconds, millis=millis) == text


async def test_a_fake_sleep_counts_from_its_call_even_if_the_clock_moves_before_it_runs() -> None:
    # A sleep raced against a wake-up (`first_of`) runs in a task of its own, and the
    # test moving the clock may run before that task does. Counted from the task's
    # start, the dispatcher's 2 s sleep began after a 30 min jump and waited for a
    # move that never came (the mute test's digest, rarely, under load).
    clock = FakeClock()
    sleeping = asyncio.ensure_future(clock.sleep(2))
    clock.advance(5)  # the task has not run yet
    done, _ = await asyncio.wait({sleeping}, timeout=5)  # a bound on failure only
    assert done, "the sleep started counting after the clock had moved"
    assert clock.sleepers == 0


async def test_a_fake_sleep_is_counted_from_its_call_and_no_longer_once_cancelled() -> None:
    clock = FakeClock()
    sleeping = asyncio.ensure_future(clock.sleep(2))
    assert clock.sleepers == 1
    sleeping.cancel()
    assert clock.sleepers == 0
    clock.advance(5)
    assert sleeping.cancelled()
