"""The retry schedule: full-jitter backoff bounds, dead-letter rules, Retry-After."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.retry import backoff_delay, parse_retry_after, plan_after_failure
from bridge.settings import RetrySettings
from bridge.store.base import DeliveryState
from bridge.targets.base import SendResult

seconds = st.floats(min_value=0.001, max_value=100_000, allow_nan=False, allow_infinity=False)
attempts_st = st.integers(min_value=1, max_value=2000)
seeds = st.integers(min_value=0, max_value=2**32)


def retry_settings() -> st.SearchStrategy[RetrySettings]:
    return st.builds(
        RetrySettings,
        max_attempts=st.one_of(st.none(), st.integers(min_value=1, max_value=30)),
        max_age_s=seconds,
        base_delay_s=seconds,
        max_delay_s=seconds,
    )


def failures() -> st.SearchStrategy[SendResult]:
    return st.builds(
        SendResult,
        ok=st.just(False),
        status=st.sampled_from([None, 408, 429, 500, 503, 404]),
        error=st.just("boom"),
        retryable=st.booleans(),
        retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=200_000)),
        pause=st.just(False),
    )


@given(attempt=attempts_st, base=seconds, cap=seconds, seed=seeds)
def test_backoff_delay_within_full_jitter_bounds(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff_delay(attempt, base, cap, random.Random(seed))
    ceiling = cap if attempt > 1000 else min(cap, base * 2 ** (attempt - 1))
    assert 0.0 <= delay <= ceiling


def test_backoff_delay_grows_exponentially_then_caps() -> None:
    # The largest of many draws approaches the ceiling: 1, 2, 4, 8, then capped at 10.
    rng = random.Random(7)
    highs = [max(backoff_delay(n, 1.0, 10.0, rng) for _ in range(2000)) for n in range(1, 7)]
    for high, ceiling in zip(highs, [1, 2, 4, 8, 10, 10], strict=True):
        assert ceiling * 0.98 < high <= ceiling


def test_backoff_delay_is_jittered() -> None:
    rng = random.Random(1)
    assert len({backoff_delay(5, 1.0, 3600.0, rng) for _ in range(50)}) == 50


def test_backoff_delay_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        backoff_delay(0, 1.0, 10.0, random.Random(0))


@settings(max_examples=300)
@given(
    retry=retry_settings(),
    attempts=st.integers(min_value=1, max_value=40),
    age=st.floats(min_value=0, max_value=200_000),
    result=failures(),
    seed=seeds,
)
def test_plan_after_failure_follows_the_dead_letter_rules(
    retry: RetrySettings, attempts: int, age: float, result: SendResult, seed: int
) -> None:
    created_at = 1_764_000_000.0
    now = created_at + age
    out = plan_after_failure(
        retry,
        delivery_id=42,
        attempts=attempts,
        created_at=created_at,
        now=now,
        result=result,
        rng=random.Random(seed),
    )
    assert (out.delivery_id, out.attempts, out.status, out.error) == (
        42,
        attempts,
        result.status,
        result.error,
    )
    should_die = (
        not result.retryable
        or (retry.max_attempts is not None and attempts >= retry.max_attempts)
        or now - created_at >= retry.max_age_s
    )
    if should_die:
        assert out.state is DeliveryState.DEAD
        assert out.next_attempt_at is None
        return
    assert out.state is DeliveryState.PENDING
    assert out.next_attempt_at is not None
    deadline = created_at + retry.max_age_s
    # Never scheduled past the age limit, never in the past.
    assert now <= out.next_attempt_at <= deadline
    ceiling = min(retry.max_delay_s, retry.base_delay_s * 2 ** (attempts - 1))
    wanted = max(ceiling, result.retry_after or 0.0)
    assert out.next_attempt_at <= min(now + wanted, deadline) + 1e-6
    if result.retry_after is not None:
        # Retry-After is a floor, cut only by the age limit.
        assert out.next_attempt_at >= min(now + result.retry_after, deadline) - 1e-6


@given(retry_after=st.floats(min_value=0, max_value=50_000), seed=seeds)
def test_retry_after_beats_a_shorter_backoff(retry_after: float, seed: int) -> None:
    retry = RetrySettings(max_attempts=10, max_age_s=1e9, base_delay_s=0.5, max_delay_s=1.0)
    result = SendResult(ok=False, status=429, retry_after=retry_after)
    out = plan_after_failure(
        retry,
        delivery_id=1,
        attempts=3,
        created_at=0.0,
        now=100.0,
        result=result,
        rng=random.Random(seed),
    )
    assert out.state is DeliveryState.PENDING
    assert out.next_attempt_at is not None
    assert 100.0 + retry_after <= out.next_attempt_at <= 101.0 + retry_after


def _plan(result: SendResult, *, attempts: int = 1, age: float = 0.0) -> tuple[str, float | None]:
    retry = RetrySettings(max_attempts=5, max_age_s=1000, base_delay_s=1, max_delay_s=60)
    out = plan_after_failure(
        retry,
        delivery_id=9,
        attempts=attempts,
        created_at=5000.0,
        now=5000.0 + age,
        result=result,
        rng=random.Random(3),
    )
    return out.state, out.next_attempt_at


def test_boundaries_of_the_dead_letter_rules() -> None:
    transient = SendResult(ok=False, status=503)
    assert _plan(transient, attempts=4)[0] == DeliveryState.PENDING
    assert _plan(transient, attempts=5) == (DeliveryState.DEAD, None)
    assert _plan(transient, age=999.9)[0] == DeliveryState.PENDING
    assert _plan(transient, age=1000.0) == (DeliveryState.DEAD, None)
    assert _plan(SendResult(ok=False, status=404, retryable=False)) == (DeliveryState.DEAD, None)


def test_by_default_age_alone_decides_so_an_hour_long_outage_loses_nothing() -> None:
    # Issue #9: with 15 attempts by default, a 1-hour outage killed 11% of deliveries.
    retry = RetrySettings()
    assert retry.max_attempts is None
    rng = random.Random(5)
    created, now, attempts = 0.0, 0.0, 0
    while now < 3 * 3600:  # a 3-hour outage: every delivery used to be dead by then
        attempts += 1
        out = plan_after_failure(
            retry,
            delivery_id=1,
            attempts=attempts,
            created_at=created,
            now=now,
            result=SendResult(ok=False, status=503),
            rng=rng,
        )
        assert out.state is DeliveryState.PENDING, (attempts, now)
        assert out.next_attempt_at is not None
        now = max(out.next_attempt_at, now + 1.0)
    assert attempts > 15
    late = plan_after_failure(
        retry,
        delivery_id=1,
        attempts=attempts + 1,
        created_at=created,
        now=86400.0,
        result=SendResult(ok=False, status=503),
        rng=rng,
    )
    assert late.state is DeliveryState.DEAD


def test_next_attempt_is_clamped_to_the_age_limit() -> None:
    long_hold = SendResult(ok=False, status=429, retry_after=10_000)
    assert _plan(long_hold, age=900.0) == (DeliveryState.PENDING, 6000.0)


def test_pause_keeps_the_delivery_pending_whatever_the_limits() -> None:
    gone = SendResult(ok=False, status=410, retryable=False, pause=True)
    assert _plan(gone, attempts=99, age=5000.0) == (DeliveryState.PENDING, 10_000.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (formatdate(1_000_090, usegmt=True), 90.0),
        (formatdate(999_000, usegmt=True), 0.0),  # a date in the past: no wait
        ("Mon, 12 Jan 1970 13:46:50 -0000", 10.0),  # naive date read as UTC
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("inf", None),
        ("nan", None),
        ("1e9", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_000_000.0) == expected
