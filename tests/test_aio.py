"""bridge/aio.py: time-limited waits that never lose a cancellation.

On Python 3.11, `asyncio.wait_for` returned the result when its caller was cancelled
in the same loop step as the awaited thing finished, and the cancellation was gone.
These tests put the cancellation exactly there: the awaited thing finishes and the
waiter is cancelled before it runs again.
"""

from __future__ import annotations

import asyncio

from bridge.aio import wait_at_most, wait_until


async def test_wait_at_most_keeps_a_cancellation_that_lands_as_the_wait_ends() -> None:
    parked = asyncio.Event()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def awaited() -> None:
        parked.set()  # no await between this and waiting on `done`
        await done

    waiting = asyncio.ensure_future(wait_at_most(5, awaited()))
    await parked.wait()
    done.set_result(None)
    waiting.cancel()
    await asyncio.wait({waiting}, timeout=5)  # a bound on failure only
    assert waiting.cancelled()


async def test_wait_at_most_says_whether_the_wait_ended_in_time() -> None:
    event = asyncio.Event()
    assert not await wait_at_most(0.01, event.wait())
    event.set()
    assert await wait_at_most(5, event.wait())
    assert await wait_at_most(None, event.wait())


async def test_wait_until_keeps_a_cancellation_that_lands_as_the_predicate_comes_true() -> None:
    # The MQTT sender's workers wait like this for the connection; one cancelled at
    # stop just as the connection came up went on to publish.
    condition = asyncio.Condition()
    looked = asyncio.Event()
    up = False

    def connected() -> bool:
        looked.set()  # Condition.wait_for waits right after a False, without yielding
        return up

    waiting = asyncio.ensure_future(wait_until(condition, connected, 5))
    await looked.wait()
    async with condition:
        up = True
        condition.notify_all()
    waiting.cancel()
    await asyncio.wait({waiting}, timeout=5)
    assert waiting.cancelled()


async def test_wait_until_gives_up_after_its_time() -> None:
    condition = asyncio.Condition()
    assert not await wait_until(condition, lambda: False, 0.01)
    assert await wait_until(condition, lambda: True, 5)
    assert not condition.locked()
