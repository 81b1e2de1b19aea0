"""`Flag`, the lazily allocated event a connection's queue waits on, and `ReceiveQueue`, the
lighter queue of received WebSocket messages."""

from __future__ import annotations

import asyncio

import pytest

from hub.flag import Flag
from hub.ws_protocol import ReceiveQueue


async def test_set_wakes_every_waiter_and_stays_set_until_cleared() -> None:
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    future = flag.waiter()
    await asyncio.sleep(0)  # the tasks reach their wait
    assert not any(w.done() for w in waiters) and not future.done()
    flag.set()
    await asyncio.gather(*waiters, future)
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 1)  # set: returns at once
    assert flag.waiter().done()
    flag.clear()
    assert not flag.is_set() and not flag.waiter().done()


async def test_a_cancelled_wait_does_not_break_the_next_set() -> None:
    flag = Flag()
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    other = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    flag.set()
    await asyncio.wait_for(other, 1)
    assert waiter.cancelled()


async def test_the_receive_queue_hands_messages_over_in_order_to_one_reader() -> None:
    queue = ReceiveQueue(asyncio.get_running_loop())
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # the reader waits
    with pytest.raises(RuntimeError, match="already being received"):
        await queue.get()
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert await asyncio.wait_for(reader, 1) == 1
    assert not queue.empty()
    assert await queue.get() == 2 and queue.empty()
