"""Filling a room's gap from storage: frames another node accepted that never reached this
node over the backplane (lost, or published before this node subscribed).

Storage is where every accepted frame ends up, so a room that is behind reads the frames it
misses from there, retrying with backoff while they are still on their way. If they do not
appear within the gap timeout the room has lost track: its watchers resume with `since`
(see `LiveHub._lose_track`), and no watcher is left with a silent gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hub.live.registry import Registry
from hub.live.session import LiveSession
from hub.storage.live_store import LiveStore, StorageUnavailable

FILL_RETRY_INITIAL_S = 0.02
FILL_RETRY_MAX_S = 0.5


class GapFiller:
    def __init__(
        self,
        store: Callable[[], LiveStore],
        registry: Registry,
        gap_timeout_s: float,
        publish: Callable[[LiveSession, int, str], None],
        lose_track: Callable[[LiveSession], None],
    ) -> None:
        self._store = store
        self._registry = registry
        self._gap_timeout_s = gap_timeout_s
        self._publish = publish
        self._lose_track = lose_track
        self._tasks: dict[LiveSession, asyncio.Task[None]] = {}  # at most one per session
        self._stopped = False

    def fill_soon(self, live: LiveSession) -> None:
        if self._stopped:
            return  # shutting down: the watchers are being closed with 1012 anyway
        task = self._tasks.get(live)
        if task is None or task.done():
            task = asyncio.create_task(self._fill(live), name="hub-gap-fill")
            self._tasks[live] = task
            task.add_done_callback(lambda done: self._forget(live, done))

    def _forget(self, live: LiveSession, task: asyncio.Task[None]) -> None:
        if self._tasks.get(live) is task:
            del self._tasks[live]

    def filling(self, live: LiveSession) -> asyncio.Task[None] | None:
        """The task filling `live`'s gap now, if any."""
        return self._tasks.get(live)

    def close(self) -> None:
        """No new fills (shutting down); the ones under way go on until `stop`."""
        self._stopped = True

    async def stop(self) -> None:
        """No new fills; the ones under way are cancelled."""
        self._stopped = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _fill(self, live: LiveSession) -> None:
        """Read the frames this room misses from storage, where their node stores them."""
        loop = asyncio.get_running_loop()
        room = live.room
        delay = FILL_RETRY_INITIAL_S
        give_up_at = loop.time() + self._gap_timeout_s
        while room.behind and self._registry.is_current(live):
            before = room.published_seq
            try:
                page = await self._store().frames_between(
                    live.id, room.published_seq, room.known_seq
                )
            except StorageUnavailable:
                page = []
            for seq, text in page:
                self._publish(live, seq, text)
            if room.published_seq > before:
                delay = FILL_RETRY_INITIAL_S
                give_up_at = loop.time() + self._gap_timeout_s
                continue
            if loop.time() >= give_up_at:
                self._lose_track(live)
                if not live.mirror_connected:
                    return
                give_up_at = loop.time() + self._gap_timeout_s  # the mirror's frames will be stored
            await asyncio.sleep(delay)
            delay = min(2 * delay, FILL_RETRY_MAX_S)
