"""`utc_iso`: RFC 3339 UTC text without building a datetime (bridge/clock.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.clock import utc_iso

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
