"""The live sessions in this node's memory: each loaded once however many connections ask for
it at the same moment, pinned while a connection uses it, evicted when idle; a session erased
never comes back.

Storage has everything a live session holds but for the frames still in the write buffer, so
a session leaves memory only when no connection uses it and everything it accepted is stored
(`LiveSession.idle`); the next connection loads it afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import orjson

from hub.live.limits import Limits
from hub.live.rooms import Room
from hub.live.session import LiveSession
from hub.settings import Settings
from hub.storage.live_store import LiveStore

PUBLIC_SESSION_FIELDS = (
    "id",
    "created_at",
    "child_name",
    "child_age",
    "child_height_cm",
    "child_weight_kg",
    "mirror_connected_at",
    "ended_at",
)


class SessionUnavailable(Exception):
    """The session cannot be used right now (its state cannot be loaded, or a mirror cannot
    safely take it over): the client retries later."""


class Registry:
    def __init__(
        self,
        store: Callable[[], LiveStore],
        subscribe: Callable[[uuid.UUID], Awaitable[None]],
        settings: Settings,
        limits: Limits,
    ) -> None:
        self._store = store
        self._subscribe = subscribe
        self._settings = settings
        self._limits = limits
        self._sessions: dict[uuid.UUID, LiveSession] = {}
        self._loading: dict[uuid.UUID, asyncio.Future[LiveSession | None]] = {}
        # Sessions being or having been erased: never loaded into memory again.
        self._erased: set[uuid.UUID] = set()

    def get(self, session_id: uuid.UUID) -> LiveSession | None:
        return self._sessions.get(session_id)

    def __iter__(self) -> Iterator[LiveSession]:
        """The sessions in memory now (a copy: callers may evict while iterating)."""
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def add(self, live: LiveSession) -> None:
        """Hold a session built by the caller (a node's unit test), as if it had been loaded."""
        self._sessions[live.id] = live

    def holds(self, session_id: uuid.UUID) -> bool:
        """In memory or being loaded: its backplane channel is still needed."""
        return session_id in self._sessions or session_id in self._loading

    def is_current(self, live: LiveSession) -> bool:
        """`live` is the session's object in memory (not one dropped or evicted meanwhile)."""
        return self._sessions.get(live.id) is live

    @contextlib.asynccontextmanager
    async def use(self, session_id: uuid.UUID) -> AsyncIterator[LiveSession | None]:
        """The live session (None if it does not exist), kept in memory while in use: a
        connection holds it from its handshake to its end, so it is never evicted under it."""
        live = await self.acquire(session_id)
        try:
            yield live
        finally:
            if live is not None:
                live.unpin()
                self.evict_if_idle(live)

    async def acquire(self, session_id: uuid.UUID) -> LiveSession | None:
        """The session, pinned (the caller unpins it), or None if it does not exist.
        Raises SessionUnavailable if it cannot be loaded now."""
        while True:
            if session_id in self._erased:
                return None
            live = self._sessions.get(session_id)
            if live is not None:
                live.pin()  # no await between the lookup and the pin
                return live
            pending = self._loading.get(session_id)
            if pending is not None:
                if await asyncio.shield(pending) is None:
                    return None
                continue  # loaded; pin it through the dict, it may have gone again
            future: asyncio.Future[LiveSession | None] = asyncio.get_running_loop().create_future()
            self._loading[session_id] = future
            try:
                loaded = await self._load(session_id)
            except BaseException as exc:
                future.set_exception(SessionUnavailable(str(exc)))
                future.exception()  # mark retrieved: other waiters re-raise it themselves
                raise SessionUnavailable("session state could not be loaded") from exc
            finally:
                del self._loading[session_id]
            future.set_result(loaded)
            if loaded is None:
                return None

    async def _load(self, session_id: uuid.UUID) -> LiveSession | None:
        # Subscribe first: a frame published while storage is read then reaches the room
        # (or shows up as a gap, filled from storage) instead of falling between the two.
        await self._subscribe(session_id)
        state = await self._store().load_state(session_id, self._limits.tasks)
        if state is None:
            return None
        row = state["session"]
        tasks = [
            {**t, "id": str(t["id"]), "metrics": orjson.loads(t["metrics"])} for t in state["tasks"]
        ]
        settings = self._settings
        room = Room(
            {k: row[k] for k in PUBLIC_SESSION_FIELDS},
            tasks,
            settings.replay_frames,
            seq=row["last_seq"],
            max_pending=settings.replay_frames,
            replay_bytes=settings.replay_bytes,
            latest=orjson.loads(row["last_metrics"]).get("values", {})
            if row["last_metrics"]
            else None,
        )
        if session_id in self._erased:
            return None  # erased (here or on another node) while it was being read
        live = LiveSession(session_id, row["last_seq"], row["ended_at"] is not None, room)
        self._sessions[session_id] = live
        return live

    def evict_if_idle(self, live: LiveSession) -> None:
        # Idle sessions leave memory; storage has everything, and `acquire` reloads them.
        if live.idle and self.is_current(live):
            del self._sessions[live.id]

    def drop(self, live: LiveSession) -> bool:
        """Take `live` out of memory although connections may still hold it (its room lost
        track of the frames): the next connection loads it afresh. False if it was not the
        current one."""
        if not self.is_current(live):
            return False
        del self._sessions[live.id]
        return True

    def erase(self, session_id: uuid.UUID) -> LiveSession | None:
        """Forget the session for good (a load under way does not put it back); returns what
        was in memory."""
        self._erased.add(session_id)
        return self._sessions.pop(session_id, None)
