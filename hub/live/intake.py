"""What this node's mirrors write: a mirror connection takes the session over (`attach_mirror`),
each message waits for room in the write buffer (`admit`), its frames are checked and taken in
seq order (`accept`: stored, published, announced, never awaiting), and `end` ends the session
once everything is stored.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from hub import metrics
from hub.frames import Ended, Frame, ProtocolError, TaskFrame, encode
from hub.live.buffer import WriteBuffer
from hub.live.cluster import Cluster
from hub.live.gaps import GapFiller
from hub.live.limits import Limits
from hub.live.peers import Peers
from hub.live.registry import Registry, SessionUnavailable
from hub.live.session import LiveSession, MirrorLink
from hub.storage.live_store import LiveStore, MirrorClaim, PendingFrame, StorageUnavailable

# A storage call on the way of a connecting client waits no longer than this.
STORAGE_TIMEOUT_S = 5.0
# Checking a new task id against storage holds its mirror's next message no longer than this.
TASK_CHECK_TIMEOUT_S = 1.0
NO_TASKS: frozenset[uuid.UUID] = frozenset()


class Intake:
    def __init__(
        self,
        sessions: Registry,
        store: Callable[[], LiveStore],
        buffer: WriteBuffer,
        cluster: Cluster,
        limits: Limits,
        gaps: GapFiller,
        peers: Peers,
        publish: Callable[[LiveSession, int, str | None, Frame | None], None],
        end_after: Callable[[LiveSession, int, datetime], None],
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._buffer = buffer
        self._cluster = cluster
        self._limits = limits
        self._gaps = gaps
        self._peers = peers
        self._publish = publish
        self._end_after = end_after
        self._db_clock_offset = 0.0  # the database's clock minus ours, as last measured

    # Mirrors -----------------------------------------------------------------------------

    async def attach_mirror(self, live: LiveSession) -> MirrorLink:
        """Make a new mirror connection the session's writer. Raises SessionUnavailable when
        that cannot be done safely now (the mirror reconnects and tries again)."""
        claim: MirrorClaim | None = None
        try:
            # The mirror may come from another node, which stored frames this node never
            # accepted: continue after what storage holds.
            claim = await self._store().claim_mirror(live.id, STORAGE_TIMEOUT_S)
            if claim.mirror_connected_at is not None:
                live.room.update_session(mirror_connected_at=claim.mirror_connected_at)
        except StorageUnavailable as exc:
            # Storage is down. If no other node is known to hold this mirror, this node's
            # memory is the truth, as with one process: the mirror goes on streaming into the
            # write buffer (invariant 5). Otherwise its frames may be elsewhere: retry later.
            heard_of_more = live.room.known_seq > live.last_accepted  # accepted on another node
            if (
                live.room.remote_mirror
                or heard_of_more
                or live.room.session.get("mirror_connected_at") is None
            ):
                raise SessionUnavailable("storage unavailable") from exc
        if not live.writable:  # ended, dropped or erased while storage was asked
            raise SessionUnavailable("session changed meanwhile; reconnect")
        if claim is not None:
            claimed_at = claim.claimed_at
            live.adopt_stored(claim.stored_seq)
            self._db_clock_offset = claimed_at - time.time()
        else:  # storage down: the database's clock as this node last saw it
            claimed_at = time.time() + self._db_clock_offset
        link = MirrorLink(bound=64)
        live.attach_mirror(link, claimed_at)
        self._peers.announce(live)  # an older connection of this mirror on another node closes
        if live.room.behind:
            self._gaps.fill_soon(live)
        return link

    def detach_mirror(self, live: LiveSession, link: MirrorLink) -> None:
        if live.detach_mirror(link):
            self._peers.announce(live)

    async def admit(
        self, live: LiveSession, frames: Sequence[Frame], size: int
    ) -> frozenset[uuid.UUID]:
        """Before `accept`: wait for room in the buffer for a message of `frames` (`size`
        bytes) from this session's mirror, and return the task ids among them that belong to
        another session (`accept` refuses their frames)."""
        # Backpressure: while the session's share of the buffer (or the buffer) is full, its
        # mirror's socket is not read, so TCP slows that mirror down; nothing is dropped.
        await self._buffer.wait_for_room(live.id, len(frames), size)
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
        if not new or len(live.room.tasks) >= self._limits.tasks:
            return NO_TASKS
        key = {str(t) for t in new}
        taken = {
            uuid.UUID(k)
            for other in self._sessions
            if other is not live
            for k in key & other.room.tasks.keys()
        }
        try:
            taken |= await self._store().tasks_of_other_sessions(
                live.id, list(new - taken), TASK_CHECK_TIMEOUT_S
            )
        except StorageUnavailable:
            # Storage is down: streaming goes on (invariant 5). Should the id be another
            # session's after all, storage leaves that session's row alone.
            pass
        return frozenset(taken)

    def admits_now(self, live: LiveSession, frames: Sequence[Frame], size: int) -> bool:
        """Whether `admit` would return NO_TASKS without waiting: one frame that names no
        task to check (not a task frame), and room for it in the buffer."""
        return (
            len(frames) == 1
            and not isinstance(frames[0], TaskFrame)
            and self._buffer.fits(live.id, 1, size)
        )

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
            refusal = live.room.refusal(frame, self._limits)
            if refusal is not None:
                return refusal
            text = encode(frame).decode()
            live.accepted(frame.seq)
            self._buffer.put(
                PendingFrame(
                    session_id=live.id,
                    seq=frame.seq,
                    received_at=received_at,
                    text=text,
                    task=frame if isinstance(frame, TaskFrame) else None,
                )
            )
            self._publish(live, frame.seq, text, frame)
            self._cluster.frame(live.id, frame.seq, text)
            metrics.received()
        return None

    async def end(self, live: LiveSession, last_seq: int) -> str:
        """Mark the session ended once every frame up to `last_seq` is stored. Raises
        StorageUnavailable if the end could not be stored (the mirror sends it again)."""
        if last_seq != live.last_accepted:
            raise ProtocolError(
                "end_mismatch",
                f"end says last_seq {last_seq} but the hub has {live.last_accepted}; "
                "send the missing frames first",
            )
        await live.wait_stored(last_seq)
        ended_at = await self._store().mark_ended(live.id)
        self._cluster.ended(live.id, last_seq, ended_at)
        self._end_after(live, last_seq, ended_at)
        return encode(Ended(last_seq=last_seq)).decode()
