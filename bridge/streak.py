"""Failure streaks: log the first failure once and the recovery once, name the reason.

SPEC §7: log state changes, not repeats.

Loops that retry on their own (a dispatcher's feeder, outcome flusher and sends)
would otherwise write a line, or a traceback, every 50 ms to every second for as
long as the store or the receiver is away (issues #9, #10). The poll scheduler and
the upstream transport keep their own streak counters; `failure_reason` names the
condition for the status API.
Expected conditions (the store unavailable, the vendor unreachable) get one warning
without a traceback; anything else gets one traceback, since it is a bug worth
reading once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from bridge.store.base import StoreUnavailable
from bridge.upstream.errors import UpstreamAuthError, UpstreamError

log = structlog.get_logger(__name__)

Expected = (StoreUnavailable,)


class Streak:
    """Tracks one loop's failure streak; logs its start and its end, nothing between."""

    def __init__(
        self,
        what: str,
        *,
        on_failure: Callable[[], None] | None = None,
        expected: tuple[type[BaseException], ...] = Expected,
        **fields: Any,
    ) -> None:
        self.what = what
        self.failures = 0
        self.last_error: str | None = None
        self._on_failure = on_failure
        self._expected = expected
        self._fields = fields

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, err: BaseException) -> bool:
        """Count a failure; True when it started a streak (and was logged)."""
        self.failures += 1
        self.last_error = str(err) or type(err).__name__
        if self._on_failure is not None:
            self._on_failure()
        if self.failures > 1:
            return False
        if isinstance(err, self._expected):
            log.warning(f"{self.what} failed; retrying", error=self.last_error, **self._fields)
        else:
            log.error(f"{self.what} failed; retrying", exc_info=err, **self._fields)
        return True

    def ok(self) -> bool:
        """End a streak; True when one ended (and its recovery was logged)."""
        if not self.failures:
            return False
        log.info(f"{self.what} recovered", failures=self.failures, **self._fields)
        self.failures = 0
        self.last_error = None
        return True


def failure_reason(err: BaseException) -> str:
    """A short, stable reason for the status API (`auth failed`, `store full`, …)."""
    if isinstance(err, StoreUnavailable):
        # SQLITE_FULL ("database or disk is full") and ENOSPC both say "full".
        text = str(err).lower()
        return "store full" if "full" in text or "no space" in text else "store unavailable"
    if isinstance(err, UpstreamAuthError):
        return "auth failed"
    if isinstance(err, UpstreamError):
        return (
            "upstream unavailable" if err.status is None or err.status >= 429 else "upstream error"
        )
    return "internal error"
