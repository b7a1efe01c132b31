"""Small asyncio helpers shared by the long-running loops.

Waits with a time limit use `asyncio.timeout`, never `asyncio.wait_for`: on Python
3.11, `wait_for` returns the result when a cancellation of its caller lands just as
the awaited thing finishes, and the cancellation is lost. A loop told to stop then
goes on, and whoever awaits it hangs (the poll lease's keeper did, at shutdown).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def first_of(*awaitables: Awaitable[Any]) -> None:
    """Wait until the first of `awaitables` finishes; cancel and reap the others."""
    waiters = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def wait_at_most(seconds: float | None, awaitable: Awaitable[Any]) -> bool:
    """Await `awaitable` for at most `seconds` (None: no limit); False if time ran out."""
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        return False
    return True


async def wait_until(
    condition: asyncio.Condition, predicate: Callable[[], bool], seconds: float
) -> bool:
    """Wait until `predicate()` holds, looking again whenever `condition` is notified;
    False after `seconds`."""
    try:
        async with asyncio.timeout(seconds), condition:
            await condition.wait_for(predicate)
    except TimeoutError:
        return False
    return True
