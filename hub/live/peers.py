"""This node among the others: what it tells them of its sessions (presence and the lobby's
live sessions, every heartbeat) and what it does with what they say (frames, presence, ends,
erasures, lobby messages, a backplane reset).

Sequence numbers carry the guarantees across nodes: a frame heard of and not received shows up
as a gap, filled from storage (`GapFiller`). Heartbeats also check storage for what no node
may be left to say: the end of a stream whose last words were lost on the backplane.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime

from hub import closecodes
from hub.live.cluster import Cluster, PresenceNote
from hub.live.gaps import GapFiller
from hub.live.lobby import Lobby
from hub.live.registry import Registry
from hub.live.session import LiveSession
from hub.storage.live_store import LiveStore, StorageUnavailable

log = logging.getLogger("hub.live")


class Peers:
    """The cluster's listener (`hub.live.cluster.Listener`) and the heartbeat's jobs."""

    def __init__(
        self,
        cluster: Cluster,
        registry: Registry,
        store: Callable[[], LiveStore],
        gaps: GapFiller,
        lobby: Lobby,
        publish: Callable[[LiveSession, int, str | None], None],
        end_after: Callable[[LiveSession, int, datetime], None],
        erase: Callable[[uuid.UUID], None],
    ) -> None:
        self._cluster = cluster
        self._registry = registry
        self._store = store
        self._gaps = gaps
        self._lobby = lobby
        self._publish = publish
        self._end_after = end_after
        self._erase = erase
        self._background: set[asyncio.Task[None]] = set()  # fire-and-forget, kept referenced

    # Telling -----------------------------------------------------------------------------

    def announce(self, live: LiveSession) -> None:
        """Tell the other nodes this node's share of the session's presence."""
        if live.dropped:  # its successor in memory speaks for this node
            return
        self._cluster.presence(
            live.id,
            live.last_accepted,
            live.stored_seq,
            len(live.room.watchers),
            live.mirror_since,
        )

    def goodbye(self, live: LiveSession) -> None:
        """This node holds no more of the session: the others need not wait for an expiry."""
        self._cluster.presence(live.id, live.last_accepted, live.stored_seq, 0, 0.0)

    def beat(self) -> None:
        """Every heartbeat: forget nodes gone silent, and tell the others we are here."""
        # While our own link is down, silence proves nothing about the other nodes: keep the
        # last presence we heard rather than flip a live mirror to "disconnected".
        cluster = self._cluster
        expired_before = time.monotonic() - cluster.expiry_s if cluster.backplane.connected else 0
        for live in self._registry:
            gone = live.room.forget_silent(expired_before)
            if gone:
                log.info("session=%s: %d node(s) silent, dropped from presence", live.id, gone)
                live.broadcast_presence()
                self._lobby.presence(live)
            if live.room.watchers or live.mirror_connected:
                self.announce(live)
        if not cluster.backplane.solitary:
            self._lobby.expire(expired_before)
            for text in self._lobby.refresh(self._registry):
                cluster.lobby(text, refresh=True)

    async def maintain(self) -> None:
        """Every heartbeat, off the announcing path: check storage for what no node may be
        left to say, and leave the channels of sessions no longer held."""
        # Watched here, written nowhere that this node hears of: the end of a stream (last
        # frames, `ended`) lost on the backplane would otherwise never arrive.
        unowned = [
            live
            for live in self._registry
            if live.room.watchers
            and not live.mirror_connected
            and not live.ended
            and not live.room.remote_mirror
        ]
        # Only where other nodes exist (one heard at least once): alone, nothing is lost.
        if unowned and self._cluster.messages_in > 0:
            await self._sync_from_storage(unowned)
        await self._cluster.unsubscribe_except(self._registry.holds)

    async def heartbeat(self) -> None:
        """One heartbeat's work, in order (the cluster runs both parts on its own timer)."""
        self.beat()
        await self.maintain()

    async def _sync_from_storage(self, lives: list[LiveSession]) -> None:
        """Learn from storage (one query) the frames and ends these sessions' rooms missed."""
        try:
            tails = await self._store().stored_tails(
                [live.id for live in lives], self._cluster.heartbeat_s
            )
        except StorageUnavailable:
            return  # storage is down or slow: the next heartbeat asks again
        for live in lives:
            stored_seq, ended_at = tails.get(live.id, (0, None))
            if not self._registry.is_current(live):
                continue
            if ended_at is not None and not live.ended:
                self._ended_elsewhere(live, stored_seq, ended_at)
            elif live.room.want(stored_seq):
                self._gaps.fill_soon(live)

    # Hearing -----------------------------------------------------------------------------

    def on_remote_frame(self, session_id: uuid.UUID, seq: int, text: str | None) -> None:
        live = self._registry.get(session_id)
        if live is not None:  # not in memory: loading it reads storage
            self._publish(live, seq, text)

    def on_remote_presence(self, session_id: uuid.UUID, note: PresenceNote) -> None:
        live = self._registry.get(session_id)
        if live is None:
            return
        room = live.room
        new_node = not room.knows(note.node)
        changed = room.hear(note.node, note.watchers, note.mirror_since, time.monotonic())
        # Frames that node accepted and that never arrived here (any note: the goodbye of a
        # mirror's node too).
        if room.want(note.last_seq):
            self._gaps.fill_soon(live)
        if note.mirror_since:
            room.trim(
                min(note.stored_seq, room.published_seq)
            )  # the owner's word on what is stored
            # The mirror connected there after it connected here: ours is a stale connection.
            if live.mirror_connected and (note.mirror_since, note.node) > (
                live.mirror_since,
                self._cluster.node,
            ):
                live.close_mirror(closecodes.REPLACED)
        if changed:
            live.broadcast_presence()
            self._lobby.presence(live)
        if new_node and room.knows(note.node) and (room.watchers or live.mirror_connected):
            self.announce(live)  # a node new to this session learns of us at once

    def on_remote_ended(self, session_id: uuid.UUID, last_seq: int, ended_at: datetime) -> None:
        live = self._registry.get(session_id)
        # Not in memory (or still loading): storage says it ended, or `maintain` finds out.
        if live is not None and not live.ended:
            self._ended_elsewhere(live, last_seq, ended_at)

    def _ended_elsewhere(self, live: LiveSession, last_seq: int, ended_at: datetime) -> None:
        # A connection of the mirror here is a stale one: the session's end was written.
        live.close_mirror(closecodes.SESSION_ENDED)
        self._end_after(live, last_seq, ended_at)

    def on_remote_lobby(self, node: str, text: str, refresh: bool) -> None:
        self._lobby.heard(node, text, time.monotonic(), refresh=refresh)

    def on_remote_erased(self, session_id: uuid.UUID) -> None:
        # Announced only after the deletion committed: it is gone for good (a load under way
        # does not put it back into memory).
        self._erase(session_id)

    def on_backplane_reset(self) -> None:
        # Frames lost meanwhile show up as gaps (next frame or the owner's heartbeat) and are
        # read from storage; presence is re-announced now rather than at the next heartbeat,
        # and the other nodes get a full expiry period from now to be heard again.
        heard_at = time.monotonic()
        watched = []
        for live in self._registry:
            live.room.heard_all(heard_at)
            if live.room.watchers or live.mirror_connected:
                self.announce(live)
            if live.room.watchers and not live.mirror_connected and not live.ended:
                watched.append(live)
        if watched:  # what was lost may have been a stream's last words: ask storage now
            task = asyncio.create_task(self._sync_from_storage(watched))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """After the backplane stopped delivering: nothing can start new tasks now."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
