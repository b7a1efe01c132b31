"""Shared test helpers: a fake clock and wait-for-condition (never sleep to synchronize)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import pytest

from bridge.clock import FakeClock


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(start=1_764_000_000.0)


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 10.0,
    interval: float = 0.005,
    message: str = "condition",
) -> None:
    """Poll `condition` (sync or async) until it is true; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)
