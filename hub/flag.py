"""`Flag`: the part of `asyncio.Event` a connection needs, lighter (see its docstring)."""

from __future__ import annotations

import asyncio


class Flag:
    """An event with `set`, `clear`, `is_set`, `wait` and `waiter`, allocated lazily: an
    `asyncio.Event` makes a deque (760 bytes) for its waiters at once, and each idle
    connection keeps four of them (its queue's two, its admission ticket's, uvicorn's
    `writable`)."""

    __slots__ = ("_loop", "_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None
        # Looked up once: each lookup is a getpid system call on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def waiter(self) -> asyncio.Future[None]:
        """A future done once the flag is set (for `asyncio.wait`: no task needed)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if self._set:
            waiter.set_result(None)
        elif self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        return waiter

    async def wait(self) -> None:
        if self._set:
            return
        waiter = self.waiter()
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:  # cancelled
                self._waiters.remove(waiter)
