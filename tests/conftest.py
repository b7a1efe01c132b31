"""Shared test helpers: a fake clock and wait-for-condition (never sleep to synchronize)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from bridge.clock import FakeClock

T = TypeVar("T")


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


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One throwaway PostgreSQL database for this test run (dropped at the end)."""
    import pg_server as pg

    try:
        url = _run_apart(pg.create_database())
    except Exception as err:  # a missing server must fail loudly, never skip
        raise RuntimeError(
            f"PostgreSQL at {pg.ADMIN_URL} is not usable ({err}); run scripts/ensure-services"
        ) from err
    yield url
    _run_apart(pg.drop_database(url))


def _run_apart(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on its own loop in a thread (fixtures may be
    set up from inside a running test loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
