"""The retry schedule (SPEC §2 `retry`, §4 Retries). Pure: no I/O, no clock reads.

Exponential backoff with full jitter (the AWS Architecture Blog's "Exponential
Backoff And Jitter"): the n-th retry waits a uniform random time in
`[0, min(max_delay_s, base_delay_s * 2**(n-1))]`, which spreads a burst of failures
out instead of retrying them in lockstep.

Dead-letter rules, checked at the moment an attempt fails:

1. the target said the failure is permanent (`retryable=False`),
2. `attempts >= max_attempts` when it is set (attempts made, including the failed one),
3. the notification is `max_age_s` old or older.

Otherwise the delivery stays pending until `now + max(backoff, Retry-After)`, but
never later than `created_at + max_age_s`: the last try happens at the age limit
rather than after it, and a failure at or past the limit is final. (A long
Retry-After is still honoured as a hold on the whole target by the dispatcher; the
clamp only bounds this delivery's own schedule.)

A webhook 410 (`pause=True`) is not a retry decision at all: the target is paused
and the delivery stays pending, due again as soon as the target is resumed.
"""

from __future__ import annotations

import math
import random
import re
from datetime import UTC
from email.utils import parsedate_to_datetime

from bridge.settings import RetrySettings
from bridge.store.base import DeliveryState, Outcome
from bridge.targets.base import SendResult

# 2.0 ** 1023 is the largest finite power of two; the ceiling is capped long before.
_MAX_EXPONENT = 1023
_DELTA_SECONDS = re.compile(r"\d{1,10}(?:\.\d{1,6})?")


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait after `attempt` attempts (>= 1): full jitter on a capped exponential."""
    if attempt < 1:
        raise ValueError("attempt counts attempts made so far and starts at 1")
    # A float power cannot raise OverflowError the way int ** int * float can; an
    # overflowing product is inf, which min() turns into max_s.
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    return rng.uniform(0.0, ceiling)


def plan_after_failure(
    retry: RetrySettings,
    *,
    delivery_id: int,
    attempts: int,
    created_at: float,
    now: float,
    result: SendResult,
    rng: random.Random,
) -> Outcome:
    """The outcome of a failed attempt: pending with its next attempt time, or dead.

    `attempts` counts attempts made including the one that just failed.
    """
    pending = DeliveryState.PENDING
    if result.pause:
        # The dispatcher pauses the target; the delivery waits for the resume.
        return Outcome(delivery_id, pending, attempts, result.status, result.error, now)
    too_old = now - created_at >= retry.max_age_s
    too_many = retry.max_attempts is not None and attempts >= retry.max_attempts
    if not result.retryable or too_many or too_old:
        return Outcome(delivery_id, DeliveryState.DEAD, attempts, result.status, result.error)
    delay = backoff_delay(attempts, retry.base_delay_s, retry.max_delay_s, rng)
    if result.retry_after is not None:
        delay = max(delay, result.retry_after)
    # max(now, …) only guards against float rounding at the deadline.
    next_at = max(now, min(now + delay, created_at + retry.max_age_s))
    return Outcome(delivery_id, pending, attempts, result.status, result.error, next_at)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from `now` given by a `Retry-After` header (delta seconds or HTTP date).

    None when the header is absent or malformed; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are GMT anyway
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None
