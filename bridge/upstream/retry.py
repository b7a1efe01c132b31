"""The upstream retry schedule, as plain functions (no I/O, no event loop)."""

from __future__ import annotations

import math
import random
from email.utils import parsedate_to_datetime


def backoff_delay(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: `uniform(0, min(max_s, base_s * 2**attempt))`.

    `attempt` counts from 0 (the wait before the first retry).
    """
    # Cap the exponent so a large attempt number cannot overflow a float.
    ceiling = min(max_s, base_s * 2.0 ** min(attempt, 62))
    return rng.uniform(0.0, max(0.0, ceiling))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date).

    Returns None when the header is absent or unreadable; never a negative number.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; be lenient with naive ones
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
