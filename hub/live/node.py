"""LiveHub: this node of the live path. It builds the parts, wires them and owns their
lifetimes; the endpoints call in here, and nothing in here awaits a socket.

The parts, each with its own state: the `Registry` of live sessions (load, pin, evict), the
`WriteBuffer` and its `Flusher` (storage through the `LiveStore`), the `GapFiller`, `Peers`
(presence and what other nodes say, over the `Cluster`) and `Admission` (connection limits).

Data flow of one frame: mirror reader → `accept` (seq check, encode once) → `publish`
(room.offer: the watchers' send queues), the backplane (other nodes' rooms) and buffer.put →
flusher commits → `_committed` → session.on_stored → mirror ack. Storage and acks never wait
for the backplane.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime

from hub import closecodes
from hub.frames import Ended, Frame, ProtocolError, encode
from hub.live.admission import Admission
from hub.live.backplane import make_backplane
from hub.live.backplane.base import Backplane
from hub.live.buffer import WriteBuffer
from hub.live.cluster import Cluster
from hub.live.flusher import Flusher
from hub.live.gaps import GapFiller
from hub.live.intake import NO_TASKS, Intake
from hub.live.limits import Limits
from hub.live.lobby import Lobby
from hub.live.peers import Peers
from hub.live.registry import Registry, SessionUnavailable
from hub.live.sendqueue import Watcher
from hub.live.session import LiveSession, MirrorLink
from hub.schemas import LiveStats
from hub.settings import Settings
from hub.storage.frames import asyncpg_dsn
from hub.storage.live_store import LiveStore, PendingFrame

__all__ = ["LiveHub", "SessionUnavailable"]

log = logging.getLogger("hub.live")

SHUTDOWN_FLUSH_TIMEOUT_S = 20.0
SHUTDOWN_CLOSE_TIMEOUT_S = 3.0


class LiveHub:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        backplane: Backplane | None = None,
        store: LiveStore | None = None,
    ) -> None:
        self.settings = settings
        self.dsn = asyncpg_dsn(database_url)
        # Storage for the live path; connected by `start` unless given (tests wrap it).
        self._store = store
        self.cluster = Cluster(
            backplane or make_backplane(settings, self.dsn), settings.backplane_heartbeat_ms / 1000
        )
        self.limits = Limits(
            tasks=settings.session_max_tasks,
            task_metrics=settings.task_max_metrics,
            session_metrics=settings.session_max_metrics,
            state_bytes=settings.session_max_state_bytes,
        )
        self.sessions = Registry(lambda: self.store, self.cluster.subscribe, settings, self.limits)
        self.buffer = WriteBuffer(
            settings.buffer_max_frames,
            settings.buffer_max_bytes,
            settings.flush_max_frames,
            settings.buffer_session_max_frames,
            settings.buffer_session_max_bytes,
            pace_s=settings.flush_interval_ms / 1000,
        )
        self.flusher: Flusher | None = None
        self.gaps = GapFiller(
            lambda: self.store,
            self.sessions,
            settings.backplane_gap_timeout_ms / 1000,
            self.publish,
            self._lose_track,
        )
        # The lobby feed's hooks (live, presence, ended), told to the other nodes if any.
        solitary = self.cluster.backplane.solitary
        self.lobby = Lobby(None if solitary else self.cluster.lobby)
        self.peers = Peers(
            self.cluster,
            self.sessions,
            lambda: self.store,
            self.gaps,
            self.lobby,
            self.publish,
            self._end_after,
            lambda session_id: self.erase(session_id, announce=False),
        )
        self.intake = Intake(
            self.sessions,
            lambda: self.store,
            self.buffer,
            self.cluster,
            self.limits,
            self.gaps,
            self.peers,
            self.publish,
            self._end_after,
        )
        self.admission = Admission(
            settings.max_connections,
            settings.max_connections_per_client,
            settings.max_unauthenticated_per_client,
        )
        self.accepting = True
        self._connections: set[asyncio.Task[None]] = set()  # open sockets, for shutdown
        self._shutdown_done: asyncio.Future[None] | None = None

    @property
    def store(self) -> LiveStore:
        assert self._store is not None, "LiveHub.start connects the store"
        return self._store

    async def start(self) -> None:
        if self._store is None:
            self._store = await LiveStore.connect(
                self.dsn, statement_timeout_s=self.settings.db_statement_timeout_s
            )
        self.flusher = Flusher(
            self.buffer,
            self._store,
            self.settings.flush_interval_ms / 1000,
            self._committed,
            self._orphaned,
            isolate_s=self.settings.flush_isolate_ms / 1000,
        )
        self.flusher.start()
        await self.cluster.start(self.peers, self.peers.beat, self.peers.maintain)

    def use(self, session_id: uuid.UUID) -> AbstractAsyncContextManager[LiveSession | None]:
        """The live session (None if it does not exist), pinned in memory while in use."""
        return self.sessions.use(session_id)

    # Mirrors (see `Intake`) ------------------------------------------------------------

    async def attach_mirror(self, live: LiveSession) -> MirrorLink:
        link = await self.intake.attach_mirror(live)
        self.lobby.went_live(live)
        return link

    def detach_mirror(self, live: LiveSession, link: MirrorLink) -> None:
        self.intake.detach_mirror(live, link)
        self.lobby.presence(live, mirror_left=True)

    async def admit(
        self, live: LiveSession, frames: Sequence[Frame], size: int
    ) -> frozenset[uuid.UUID]:
        return await self.intake.admit(live, frames, size)

    def admits_now(self, live: LiveSession, frames: Sequence[Frame], size: int) -> bool:
        """Whether `admit` would return at once with no task ids to refuse: one metrics
        frame, with room for it in the write buffer."""
        return self.intake.admits_now(live, frames, size)

    def accept(
        self,
        live: LiveSession,
        frames: Sequence[Frame],
        foreign_tasks: frozenset[uuid.UUID] = NO_TASKS,
    ) -> ProtocolError | None:
        return self.intake.accept(live, frames, foreign_tasks)

    async def end(self, live: LiveSession, last_seq: int) -> str:
        return await self.intake.end(live, last_seq)

    def _end_after(self, live: LiveSession, last_seq: int, ended_at: datetime) -> None:
        """The session ended after `last_seq`. No mirror may write any more; this node's
        watchers get `ended` once its room has published every frame up to `last_seq`
        (at once, unless the room is still filling a gap)."""
        if live.gone:  # dropped or erased meanwhile: nobody is fed from this object any more
            return
        if live.end_after_seq(last_seq, ended_at):
            self._finish_if_due(live)
        elif live.room.behind:
            self.gaps.fill_soon(live)

    def _finish_if_due(self, live: LiveSession) -> None:
        due = live.end_due()
        if due is None:
            return
        last_seq, ended_at = due
        live.room.update_session(ended_at=ended_at)
        ended = encode(Ended(last_seq=last_seq)).decode()
        live.room.close_watchers(closecodes.NORMAL, "session ended", flush=True, last=ended)
        self.lobby.ended(live, last_seq)

    def publish(
        self, live: LiveSession, seq: int, text: str | None, frame: Frame | None = None
    ) -> None:
        """Frame `seq` reached this node (from its mirror, another node or storage): the room
        publishes it in order; a gap is filled from storage; a pending end follows the last."""
        room = live.room
        room.offer(seq, text, frame)
        if room.behind:
            self.gaps.fill_soon(live)
        elif live.ending:  # the usual frame has no end pending: no call
            self._finish_if_due(live)

    def _lose_track(self, live: LiveSession) -> None:
        """Frames this room misses did not reach storage in time: its watchers resume with
        `since` (from storage and a fresh room); no watcher is left with a silent gap."""
        log.warning(
            "session=%s: frames %d..%d missing on this node; watchers resume",
            live.id,
            live.room.published_seq + 1,
            live.room.known_seq,
        )
        live.room.close_watchers(closecodes.RESYNC)
        # The next connection loads it afresh from storage; connections that hold this
        # one already are turned away when they join or attach (`dropped`).
        if not live.mirror_connected and self.sessions.drop(live):
            live.drop()
            self.peers.goodbye(live)  # its watchers are leaving

    def _committed(self, batch: Sequence[PendingFrame]) -> None:
        newest: dict[uuid.UUID, int] = {}
        for frame in batch:
            newest[frame.session_id] = frame.seq  # batches are in seq order per session
        for session_id, seq in newest.items():
            live = self.sessions.get(session_id)
            if live is not None:
                live.on_stored(seq)
                self.sessions.evict_if_idle(live)

    def erase(self, session_id: uuid.UUID, announce: bool = True) -> None:
        """The session's deletion is committed: close its clients with 4004 and forget it, on
        every node. Call it only after the commit (4004 tells clients never to come back).
        Frames of it still buffered fail their foreign key when flushed and are dropped
        (`_orphaned`)."""
        if announce:
            self.cluster.erased(session_id)
        live = self.sessions.erase(session_id)
        if live is not None:
            live.erase()

    def _orphaned(self, session_ids: set[uuid.UUID]) -> None:
        for session_id in session_ids:
            self.erase(session_id)

    # Watchers ----------------------------------------------------------------------------

    def join(self, live: LiveSession, watcher: Watcher) -> None:
        if not live.joinable:  # this room is fed no more: resume on the one now in memory
            watcher.outbox.close(closecodes.RESYNC)
            return
        # The others hear of the newcomer; the newcomer reads presence in its snapshot.
        live.broadcast_presence(joining=1)
        live.room.add_watcher(watcher)
        self.peers.announce(live)
        self.lobby.presence(live)

    def leave(self, live: LiveSession, watcher: Watcher) -> None:
        live.room.remove_watcher(watcher)
        live.broadcast_presence()
        self.peers.announce(live)
        self.lobby.presence(live)

    def task_results(
        self, session_id: uuid.UUID, task_id: uuid.UUID, values: dict[str, float]
    ) -> None:
        """Task results recorded over HTTP (stored already): a room of the session in this
        node's memory shows them in its snapshots, as it does a finished task frame's."""
        live = self.sessions.get(session_id)
        if live is not None:
            live.room.add_task_results(str(task_id), values)

    async def wait_stored(self, session_id: uuid.UUID, seq: int) -> None:
        """Until this node has stored the session's frames up to `seq`. A session not in this
        node's memory has nothing buffered here (it leaves memory only once stored): at once."""
        live = self.sessions.get(session_id)
        if live is not None:
            await live.wait_stored(seq)

    async def stored_frames(
        self, session_id: uuid.UUID, after: int, upto: int, page: int = 1000
    ) -> list[tuple[int, str]]:
        """Stored frames after < seq <= upto (a watcher's catch-up); StorageUnavailable."""
        return await self.store.frames_between(session_id, after, upto, page)

    def connection_opened(self, connection: asyncio.Task[None]) -> None:
        """A socket's task (run above this package): shutdown waits for it to close."""
        self._connections.add(connection)

    def connection_closed(self, connection: asyncio.Task[None]) -> None:
        self._connections.discard(connection)

    def stats(self) -> LiveStats:
        sessions = list(self.sessions)
        return LiveStats(
            sessions=len(sessions),
            mirrors=sum(1 for s in sessions if s.mirror_connected),
            watchers=sum(len(s.room.watchers) for s in sessions),
            buffered_frames=len(self.buffer),
            buffer_max_frames=self.buffer.max_frames,
            buffer_peak_frames=self.buffer.peak_frames,
            storage_failures=self.flusher.failures if self.flusher is not None else 0,
            node=self.cluster.node,
            backplane=self.settings.backplane_kind,
            backplane_resets=self.cluster.resets,
        )

    # Shutdown ----------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop taking frames, store and ack everything buffered, close sockets with 1012."""
        if self._shutdown_done is not None:
            return await asyncio.shield(self._shutdown_done)
        self._shutdown_done = asyncio.get_running_loop().create_future()
        self.accepting = False
        self.gaps.close()  # the watchers are being closed with 1012 anyway
        try:
            if self.flusher is not None:
                try:
                    async with asyncio.timeout(SHUTDOWN_FLUSH_TIMEOUT_S):
                        await self.flusher.drain()
                except TimeoutError:
                    # The mirrors still hold these frames unacked and resend them to the next hub.
                    log.warning(
                        "shutdown: %d frames not stored, mirrors will resend", len(self.buffer)
                    )
            for live in self.sessions:
                # 1012's usual reason says everything was stored: only when it is true.
                unstored = live.last_accepted > live.stored_seq
                reason = "hub shutting down; resend unacked frames" if unstored else ""
                live.close_mirror(closecodes.RESTART, reason, flush=True)
                live.room.close_watchers(closecodes.RESTART, flush=True)
            self.lobby.close(closecodes.RESTART)
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=SHUTDOWN_CLOSE_TIMEOUT_S)
            for live in self.sessions:  # the other nodes need not wait for expiry
                self.peers.goodbye(live)
            await self.cluster.stop()
            # After the backplane stopped delivering: nothing can start new tasks now.
            await self.gaps.stop()
            await self.peers.stop()
            if self._store is not None:
                await self._store.close()
        finally:
            self._shutdown_done.set_result(None)
