"""LiveHub: the live sessions of this node, the write buffer, the flusher, the backplane.

The endpoints call in here; nothing in here awaits a socket. Data flow of one frame:
mirror reader → `accept` (seq check, encode once) → room.offer (watcher outboxes), the
backplane (other nodes' rooms) and buffer.put → flusher commits → `_committed` →
session.on_stored → mirror ack. Storage and acks never wait for the backplane.

Across nodes, sequence numbers carry the guarantees: a room publishes each seq once, in
order, whether it came from the local mirror, the backplane or storage. A room that sees a
gap (a frame lost on the backplane, a reconnect) reads the missing frames from storage;
if they do not appear in time, its watchers are closed with RESYNC to resume with `since`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import orjson

from hub import closecodes, metrics
from hub.frames import Ended, Frame, ProtocolError, TaskFrame, encode
from hub.live.admission import Admission
from hub.live.backplane import make_backplane
from hub.live.backplane.base import Backplane
from hub.live.buffer import WriteBuffer
from hub.live.cluster import Cluster, PresenceNote
from hub.live.flusher import Flusher
from hub.live.rooms import Limits, RemotePresence, Room, Watcher
from hub.live.session import LiveSession, MirrorLink
from hub.schemas import LiveStats
from hub.settings import Settings
from hub.storage.frames import asyncpg_dsn
from hub.storage.live_store import LiveStore, MirrorClaim, PendingFrame, StorageUnavailable

log = logging.getLogger("hub.live")

SHUTDOWN_FLUSH_TIMEOUT_S = 20.0
SHUTDOWN_CLOSE_TIMEOUT_S = 3.0
# A storage call on the way of a connecting client waits no longer than this.
STORAGE_TIMEOUT_S = 5.0
# Checking a new task id against storage holds its mirror's next message no longer than this.
TASK_CHECK_TIMEOUT_S = 1.0
NO_TASKS: frozenset[uuid.UUID] = frozenset()
FILL_RETRY_INITIAL_S = 0.02
FILL_RETRY_MAX_S = 0.5
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
        self.cluster = Cluster(
            backplane or make_backplane(settings, self.dsn), settings.backplane_heartbeat_ms / 1000
        )
        self.sessions: dict[uuid.UUID, LiveSession] = {}
        self._loading: dict[uuid.UUID, asyncio.Future[LiveSession | None]] = {}
        self.buffer = WriteBuffer(
            settings.buffer_max_frames,
            settings.buffer_max_bytes,
            settings.flush_max_frames,
            settings.buffer_session_max_frames,
            settings.buffer_session_max_bytes,
            pace_s=settings.flush_interval_ms / 1000,
        )
        self.limits = Limits(
            tasks=settings.session_max_tasks,
            task_metrics=settings.task_max_metrics,
            session_metrics=settings.session_max_metrics,
            state_bytes=settings.session_max_state_bytes,
        )
        self.accepting = True
        # Storage for the live path; connected by `start` unless given (tests wrap it).
        self.store = store
        self.flusher: Flusher | None = None
        self._connections: set[asyncio.Task[None]] = set()  # open sockets, for shutdown
        self.admission = Admission(
            settings.max_connections,
            settings.max_connections_per_client,
            settings.max_unauthenticated_per_client,
        )
        # Sessions being or having been erased: never loaded into memory again.
        self.erased: set[uuid.UUID] = set()
        self._shutdown_done: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # fire-and-forget, kept referenced
        self._db_clock_offset = 0.0  # the database's clock minus ours, as last measured
        # Erased on another node while this one was loading it: not put into memory.
        self._erased_while_loading: set[uuid.UUID] = set()

    async def start(self) -> None:
        if self.store is None:
            self.store = await LiveStore.connect(self.dsn)
        self.flusher = Flusher(
            self.buffer,
            self.store,
            self.settings.flush_interval_ms / 1000,
            self._committed,
            self._orphaned,
            isolate_s=self.settings.flush_isolate_ms / 1000,
        )
        self.flusher.start()
        await self.cluster.start(self, self._beat, self._maintain)

    # Sessions ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, session_id: uuid.UUID) -> AsyncIterator[LiveSession | None]:
        """The live session (None if it does not exist), kept in memory while in use: a
        connection holds it from its handshake to its end, so it is never evicted under it."""
        live = await self._acquire(session_id)
        try:
            yield live
        finally:
            if live is not None:
                live.pins -= 1
                self._evict_if_idle(live)

    async def _acquire(self, session_id: uuid.UUID) -> LiveSession | None:
        while True:
            if session_id in self.erased:
                return None
            live = self.sessions.get(session_id)
            if live is not None:
                live.pins += 1  # no await between the lookup and the pin
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
        assert self.store is not None
        # Subscribe first: a frame published while storage is read then reaches the room
        # (or shows up as a gap, filled from storage) instead of falling between the two.
        await self.cluster.subscribe(session_id)
        state = await self.store.load_state(session_id, self.limits.tasks)
        if state is None:
            return None
        row = state["session"]
        tasks = [
            {**t, "id": str(t["id"]), "metrics": orjson.loads(t["metrics"])} for t in state["tasks"]
        ]
        room = Room(
            {k: row[k] for k in PUBLIC_SESSION_FIELDS},
            tasks,
            self.settings.replay_frames,
            seq=row["last_seq"],
            max_pending=self.settings.replay_frames,
            replay_bytes=self.settings.replay_bytes,
            latest=orjson.loads(row["last_metrics"]).get("values", {})
            if row["last_metrics"]
            else None,
        )
        live = LiveSession(session_id, row["last_seq"], row["ended_at"] is not None, room)
        if session_id in self.erased or session_id in self._erased_while_loading:
            self._erased_while_loading.discard(session_id)
            return None  # erased while it was being read
        self.sessions[session_id] = live
        return live

    def _evict_if_idle(self, live: LiveSession) -> None:
        # Idle sessions leave memory; storage has everything, and `get` reloads them.
        if live.idle and self.sessions.get(live.id) is live:
            del self.sessions[live.id]

    # Mirrors -----------------------------------------------------------------------------

    async def attach_mirror(self, live: LiveSession) -> MirrorLink:
        """Make a new mirror connection the session's writer. Raises SessionUnavailable when
        that cannot be done safely now (the mirror reconnects and tries again)."""
        assert self.store is not None
        claim: MirrorClaim | None = None
        try:
            # The mirror may come from another node, which stored frames this node never
            # accepted: continue after what storage holds.
            first = live.room.session.get("mirror_connected_at") is None
            claim = await self.store.claim_mirror(live.id, first, STORAGE_TIMEOUT_S)
            if claim.mirror_connected_at is not None:
                live.room.session["mirror_connected_at"] = claim.mirror_connected_at
        except StorageUnavailable as exc:
            # Storage is down. If no other node is known to hold this mirror, this node's
            # memory is the truth, as with one process: the mirror goes on streaming into the
            # write buffer (invariant 5). Otherwise its frames may be elsewhere: retry later.
            remote_mirror = any(r.mirror_since for r in live.room.remote.values())
            heard_of_more = live.room.wanted > live.last_accepted  # accepted on another node
            if (
                remote_mirror
                or heard_of_more
                or live.room.session.get("mirror_connected_at") is None
            ):
                raise SessionUnavailable("storage unavailable") from exc
        if live.dropped or live.erased or live.ended:
            raise SessionUnavailable("session changed meanwhile; reconnect")
        if claim is not None:
            claimed_at = claim.claimed_at
            live.adopt_stored(claim.stored_seq)
            self._db_clock_offset = claimed_at - time.time()
        else:  # storage down: the database's clock as this node last saw it
            claimed_at = time.time() + self._db_clock_offset
        link = MirrorLink(bound=64)
        live.attach_mirror(link, claimed_at)
        self._announce(live)  # an older connection of this mirror on another node closes
        if live.room.behind:
            self._fill_soon(live)
        return link

    def detach_mirror(self, live: LiveSession, link: MirrorLink) -> None:
        if live.detach_mirror(link):
            self._announce(live)

    async def admit(
        self, live: LiveSession, frames: Sequence[Frame], size: int
    ) -> frozenset[uuid.UUID]:
        """Before `accept`: wait for room in the buffer for a message of `frames` (`size`
        bytes) from this session's mirror, and return the task ids among them that belong to
        another session (`accept` refuses their frames)."""
        # Backpressure: while the session's share of the buffer (or the buffer) is full, its
        # mirror's socket is not read, so TCP slows that mirror down; nothing is dropped.
        await self.buffer.wait_for_room(live.id, len(frames), size)
        if len(frames) > 1:
            # A batch costs its mirror's reader milliseconds, and batches arriving back to
            # back would be read without a pause: let the other connections run in between.
            await asyncio.sleep(0)
        elif not isinstance(frames[0], TaskFrame):
            return NO_TASKS  # the usual message: one metrics frame
        new = {
            f.task_id
            for f in frames
            if isinstance(f, TaskFrame) and str(f.task_id) not in live.room.tasks
        }
        # The usual case: tasks this session has already. At its task limit, `accept` refuses
        # new ones anyway: no query for them (a flood of new ids costs storage nothing).
        if not new or len(live.room.tasks) >= self.limits.tasks:
            return NO_TASKS
        key = {str(t) for t in new}
        taken = {
            uuid.UUID(k)
            for other in self.sessions.values()
            if other is not live
            for k in key & other.room.tasks.keys()
        }
        assert self.store is not None
        try:
            taken |= await self.store.tasks_of_other_sessions(
                live.id, list(new - taken), TASK_CHECK_TIMEOUT_S
            )
        except StorageUnavailable:
            # Storage is down: streaming goes on (invariant 5). Should the id be another
            # session's after all, storage leaves that session's row alone.
            pass
        return frozenset(taken)

    def accept(
        self,
        live: LiveSession,
        frames: Sequence[Frame],
        foreign_tasks: frozenset[uuid.UUID] = NO_TASKS,
    ) -> ProtocolError | None:
        """Take frames in seq order; stop at the first bad one and return its error.

        Never awaits: the caller has already waited for room in the buffer (`admit`). A
        frame over one of the session's limits, or naming another session's task, is
        refused: not stored, not published, not acked; the frames before it are taken.
        """
        received_at = datetime.now(UTC)
        for frame in frames:
            try:
                live.check_seq(frame.seq)
            except ProtocolError as exc:
                return exc
            if foreign_tasks and isinstance(frame, TaskFrame) and frame.task_id in foreign_tasks:
                return ProtocolError(
                    "task_id_in_use",
                    f"task_id {frame.task_id} is a task of another session; use a new id",
                    frame.seq,
                    frame.seq,
                )
            # Counted on what the room has published: frames still waiting there behind a
            # gap (a mirror that just moved to this node) are not counted yet.
            refusal = live.room.refusal(frame, self.limits)
            if refusal is not None:
                return refusal
            text = encode(frame).decode()
            is_task = isinstance(frame, TaskFrame)
            live.last_accepted = frame.seq
            self.buffer.put(
                PendingFrame(
                    session_id=live.id,
                    seq=frame.seq,
                    kind="task" if is_task else "metrics",
                    task_id=frame.task_id,
                    device_ts=frame.ts,
                    received_at=received_at,
                    text=text,
                    task=frame if isinstance(frame, TaskFrame) else None,
                )
            )
            self._offer(live, frame.seq, text, frame)
            self.cluster.frame(live.id, frame.seq, text)
            metrics.FRAMES_RECEIVED.inc()
        return None

    async def end(self, live: LiveSession, last_seq: int) -> str:
        """Mark the session ended once every frame up to `last_seq` is stored."""
        if last_seq != live.last_accepted:
            raise ProtocolError(
                "end_mismatch",
                f"end says last_seq {last_seq} but the hub has {live.last_accepted}; "
                "send the missing frames first",
            )
        await live.wait_stored(last_seq)
        assert self.store is not None
        ended_at = await self.store.mark_ended(live.id)
        self.cluster.ended(live.id, last_seq, ended_at)
        self._end_after(live, last_seq, ended_at)
        return encode(Ended(last_seq=last_seq)).decode()

    def _end_after(self, live: LiveSession, last_seq: int, ended_at: datetime) -> None:
        """The session ended after `last_seq`. No mirror may write any more; this node's
        watchers get `ended` once its room has published every frame up to `last_seq`
        (at once, unless the room is still filling a gap)."""
        live.ended = True
        live.room.wanted = max(live.room.wanted, last_seq)
        live.end_after = (last_seq, ended_at)
        if live.room.seq >= last_seq:
            self._finish(live)
        else:
            self._fill_soon(live)

    def _finish(self, live: LiveSession) -> None:
        assert live.end_after is not None
        last_seq, ended_at = live.end_after
        live.end_after = None
        live.room.session["ended_at"] = ended_at
        text = encode(Ended(last_seq=last_seq)).decode()
        for watcher in live.room.watchers:
            watcher.outbox.push(text)
            watcher.outbox.close(closecodes.NORMAL, "session ended", flush=True)

    def _committed(self, batch: Sequence[PendingFrame]) -> None:
        newest: dict[uuid.UUID, int] = {}
        for frame in batch:
            newest[frame.session_id] = frame.seq  # batches are in seq order per session
        for session_id, seq in newest.items():
            live = self.sessions.get(session_id)
            if live is not None:
                live.on_stored(seq)
                self._evict_if_idle(live)

    def erase(self, session_id: uuid.UUID, announce: bool = True) -> None:
        """The session's deletion is committed: close its clients with 4004 and forget it, on
        every node. Call it only after the commit (4004 tells clients never to come back).
        Frames of it still buffered fail their foreign key when flushed and are dropped
        (`_orphaned`)."""
        self.erased.add(session_id)
        if announce:
            self.cluster.erased(session_id)
        live = self.sessions.pop(session_id, None)
        if live is None:
            return
        live.erased = True
        if live.mirror is not None:
            live.mirror.outbox.close(closecodes.UNKNOWN_SESSION, "session was deleted")
        for watcher in live.room.watchers:
            watcher.outbox.close(closecodes.UNKNOWN_SESSION, "session was deleted")

    def _orphaned(self, session_ids: set[uuid.UUID]) -> None:
        for session_id in session_ids:
            self.erase(session_id)

    # Watchers ----------------------------------------------------------------------------

    def join(self, live: LiveSession, watcher: Watcher) -> None:
        if live.dropped:  # this room is fed no more: resume on the one now in memory
            watcher.outbox.close(closecodes.RESYNC)
            return
        # The others hear of the newcomer; the newcomer reads presence in its snapshot.
        live.room.broadcast_presence(joining=1)
        live.room.watchers.add(watcher)
        self._announce(live)

    def leave(self, live: LiveSession, watcher: Watcher) -> None:
        live.room.watchers.discard(watcher)
        live.room.broadcast_presence()
        self._announce(live)

    def task_results(
        self, session_id: uuid.UUID, task_id: uuid.UUID, values: dict[str, float]
    ) -> None:
        """Task results recorded over HTTP (stored already): a room of the session in this
        node's memory shows them in its snapshots, as it does a finished task frame's."""
        live = self.sessions.get(session_id)
        task = live.room.tasks.get(str(task_id)) if live is not None else None
        if task is not None:
            task["metrics"] = {**task["metrics"], **values}

    # Other nodes -------------------------------------------------------------------------

    def _offer(
        self, live: LiveSession, seq: int, text: str | None, frame: Frame | None = None
    ) -> None:
        room = live.room
        room.offer(seq, text, frame)
        if room.behind:
            self._fill_soon(live)
        elif live.end_after is not None and room.seq >= live.end_after[0]:
            self._finish(live)

    def _fill_soon(self, live: LiveSession) -> None:
        if self._shutdown_done is not None:
            return  # shutting down: the watchers are being closed with 1012 anyway
        if live.filling is None or live.filling.done():
            live.filling = asyncio.create_task(self._fill(live), name="hub-gap-fill")

    async def _fill(self, live: LiveSession) -> None:
        """Read the frames this room misses from storage, where their node stores them."""
        loop = asyncio.get_running_loop()
        room = live.room
        delay = FILL_RETRY_INITIAL_S
        gap_timeout = self.settings.backplane_gap_timeout_ms / 1000
        give_up_at = loop.time() + gap_timeout
        while room.behind and self.sessions.get(live.id) is live:
            before = room.seq
            try:
                page = await self.stored_frames(live.id, room.seq, room.wanted)
            except StorageUnavailable:
                page = []
            for seq, text in page:
                self._offer(live, seq, text)
            if room.seq > before:
                delay = FILL_RETRY_INITIAL_S
                give_up_at = loop.time() + gap_timeout
                continue
            if loop.time() >= give_up_at:
                self._lost_track(live)
                if live.mirror is None:
                    return
                give_up_at = loop.time() + gap_timeout  # the mirror's frames will be stored
            await asyncio.sleep(delay)
            delay = min(2 * delay, FILL_RETRY_MAX_S)

    def _lost_track(self, live: LiveSession) -> None:
        """Frames this room misses did not reach storage in time: its watchers resume with
        `since` (from storage and a fresh room); no watcher is left with a silent gap."""
        log.warning(
            "session=%s: frames %d..%d missing on this node; watchers resume",
            live.id,
            live.room.seq + 1,
            live.room.wanted,
        )
        for watcher in live.room.watchers:
            watcher.outbox.close(closecodes.RESYNC)
        if live.mirror is None and self.sessions.get(live.id) is live:
            # The next connection loads it afresh from storage; connections that hold this
            # one already are turned away when they join or attach (`dropped`).
            del self.sessions[live.id]
            live.dropped = True
            # Its watchers are leaving: the other nodes need not wait for an expiry.
            self.cluster.presence(live.id, live.last_accepted, live.stored_seq, 0, 0.0)

    def _announce(self, live: LiveSession) -> None:
        """Tell the other nodes this node's share of the session's presence."""
        if live.dropped:  # its successor in memory speaks for this node
            return
        self.cluster.presence(
            live.id,
            live.last_accepted,
            live.stored_seq,
            len(live.room.watchers),
            live.mirror_since,
        )

    def _beat(self) -> None:
        """Every heartbeat: forget nodes gone silent, and tell the others we are here."""
        # While our own link is down, silence proves nothing about the other nodes: keep the
        # last presence we heard rather than flip a live mirror to "disconnected".
        expired_before = (
            time.monotonic() - self.cluster.expiry_s if self.cluster.backplane.connected else 0
        )
        for live in list(self.sessions.values()):
            room = live.room
            gone = [node for node, r in room.remote.items() if r.heard_at < expired_before]
            for node in gone:
                del room.remote[node]
            if gone:
                log.info("session=%s: %d node(s) silent, dropped from presence", live.id, len(gone))
                room.broadcast_presence()
            if room.watchers or live.mirror is not None:
                self._announce(live)

    async def _maintain(self) -> None:
        """Every heartbeat, off the announcing path: check storage for what no node may be
        left to say, and leave the channels of sessions no longer held."""
        # Watched here, written nowhere that this node hears of: the end of a stream (last
        # frames, `ended`) lost on the backplane would otherwise never arrive.
        unowned = [
            live
            for live in self.sessions.values()
            if live.room.watchers
            and live.mirror is None
            and not live.ended
            and not any(r.mirror_since for r in live.room.remote.values())
        ]
        # Only where other nodes exist (one heard at least once): alone, nothing is lost.
        others = self.cluster.messages_in > 0
        if unowned and others:
            await self._sync_from_storage(unowned)
        await self.cluster.unsubscribe_except(
            lambda session_id: session_id in self.sessions or session_id in self._loading
        )

    async def _heartbeat(self) -> None:
        """One heartbeat's work, in order (tests call it; the cluster runs both parts)."""
        self._beat()
        await self._maintain()

    async def _sync_from_storage(self, lives: list[LiveSession]) -> None:
        """Learn from storage (one query) the frames and ends these sessions' rooms missed."""
        assert self.store is not None
        try:
            tails = await self.store.stored_tails(
                [live.id for live in lives], self.cluster.heartbeat_s
            )
        except StorageUnavailable:
            return  # storage is down or slow: the next heartbeat asks again
        for live in lives:
            stored_seq, ended_at = tails.get(live.id, (0, None))
            if self.sessions.get(live.id) is not live:
                continue
            if ended_at is not None and not live.ended:
                self._ended_elsewhere(live, stored_seq, ended_at)
            elif stored_seq > live.room.wanted:
                live.room.wanted = stored_seq
                self._fill_soon(live)

    def on_remote_frame(self, session_id: uuid.UUID, seq: int, text: str | None) -> None:
        live = self.sessions.get(session_id)
        if live is not None:  # not in memory: loading it reads storage
            self._offer(live, seq, text)

    def on_remote_presence(self, session_id: uuid.UUID, note: PresenceNote) -> None:
        live = self.sessions.get(session_id)
        if live is None:
            return
        room = live.room
        before = room.remote.get(note.node)
        if note.watchers == 0 and not note.mirror_since:
            room.remote.pop(note.node, None)  # that node left the session
        else:
            room.remote[note.node] = RemotePresence(
                note.watchers, note.mirror_since, time.monotonic()
            )
        # Frames that node accepted and that never arrived here (any note: the goodbye of a
        # mirror's node too).
        if note.last_seq > room.wanted:
            room.wanted = note.last_seq
            self._fill_soon(live)
        if note.mirror_since:
            room.trim(min(note.stored_seq, room.seq))  # the owner's word on what is stored
            # The mirror connected there after it connected here: ours is a stale connection.
            if live.mirror is not None and (note.mirror_since, note.node) > (
                live.mirror_since,
                self.cluster.node,
            ):
                live.mirror.outbox.close(closecodes.REPLACED)
        after = room.remote.get(note.node)
        if (before is None) != (after is None) or (
            before is not None
            and after is not None
            and (before.watchers, bool(before.mirror_since))
            != (after.watchers, bool(after.mirror_since))
        ):
            room.broadcast_presence()
        if before is None and after is not None and (room.watchers or live.mirror is not None):
            self._announce(live)  # a node new to this session learns of us at once

    def on_remote_ended(self, session_id: uuid.UUID, last_seq: int, ended_at: datetime) -> None:
        live = self.sessions.get(session_id)
        # Not in memory (or still loading): storage says it ended, or `_maintain` finds out.
        if live is not None and not live.ended:
            self._ended_elsewhere(live, last_seq, ended_at)

    def _ended_elsewhere(self, live: LiveSession, last_seq: int, ended_at: datetime) -> None:
        # A connection of the mirror here is a stale one: the session's end was written.
        if live.mirror is not None:
            live.mirror.outbox.close(closecodes.SESSION_ENDED)
        self._end_after(live, last_seq, ended_at)

    def on_remote_erased(self, session_id: uuid.UUID) -> None:
        # Announced only after the deletion committed: it is gone for good.
        self.erase(session_id, announce=False)
        if session_id in self._loading:
            self._erased_while_loading.add(session_id)

    def on_backplane_reset(self) -> None:
        # Frames lost meanwhile show up as gaps (next frame or the owner's heartbeat) and are
        # read from storage; presence is re-announced now rather than at the next heartbeat,
        # and the other nodes get a full expiry period from now to be heard again.
        heard_at = time.monotonic()
        watched = []
        for live in list(self.sessions.values()):
            for remote in live.room.remote.values():
                remote.heard_at = heard_at
            if live.room.watchers or live.mirror is not None:
                self._announce(live)
            if live.room.watchers and live.mirror is None and not live.ended:
                watched.append(live)
        if watched:  # what was lost may have been a stream's last words: ask storage now
            task = asyncio.create_task(self._sync_from_storage(watched))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def stored_frames(
        self, session_id: uuid.UUID, after: int, upto: int, page: int = 1000
    ) -> list[tuple[int, str]]:
        assert self.store is not None
        return await self.store.frames_between(session_id, after, upto, page)

    def connection_opened(self, connection: asyncio.Task[None]) -> None:
        """A socket's task (run above this package): shutdown waits for it to close."""
        self._connections.add(connection)

    def connection_closed(self, connection: asyncio.Task[None]) -> None:
        self._connections.discard(connection)

    def stats(self) -> LiveStats:
        sessions = list(self.sessions.values())
        return LiveStats(
            sessions=len(sessions),
            mirrors=sum(1 for s in sessions if s.mirror is not None),
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
            for live in list(self.sessions.values()):
                if live.mirror is not None:
                    # 1012's usual reason says everything was stored: only when it is true.
                    unstored = live.last_accepted > live.stored_seq
                    reason = "hub shutting down; resend unacked frames" if unstored else ""
                    live.mirror.outbox.close(closecodes.RESTART, reason, flush=True)
                for watcher in live.room.watchers:
                    watcher.outbox.close(closecodes.RESTART, flush=True)
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=SHUTDOWN_CLOSE_TIMEOUT_S)
            for live in list(self.sessions.values()):  # the other nodes need not wait for expiry
                self.cluster.presence(live.id, live.last_accepted, live.stored_seq, 0, 0.0)
            await self.cluster.stop()
            # After the backplane stopped delivering: nothing can start new ones now.
            leftovers = [live.filling for live in self.sessions.values() if live.filling]
            leftovers += self._background
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
            if self.store is not None:
                await self.store.close()
        finally:
            self._shutdown_done.set_result(None)
