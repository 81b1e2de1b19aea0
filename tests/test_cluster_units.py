"""Unit tests of the pure parts of scale-out: a room's ordering of frames from anywhere, and
the cluster's messages over the in-process backplane (the live path is tested with real
processes in test_scaleout.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from hub.frames import MetricsFrame, encode
from hub.live.backplane.memory import MemoryBackplane, MemoryBroker
from hub.live.cluster import Cluster, PresenceNote, channel_of, session_of
from hub.live.node import LiveHub
from hub.live.rooms import RemotePresence, Room, Watcher
from hub.live.session import LiveSession
from hub.settings import Settings


def frame_text(seq: int) -> str:
    return encode(MetricsFrame(seq=seq, ts=1.0, values={"accuracy": seq / 100})).decode()


def make_room(seq: int = 0, max_pending: int = 100) -> tuple[Room, Watcher]:
    room = Room({"id": "s"}, [], replay_frames=10, seq=seq, max_pending=max_pending)
    watcher = Watcher(bound=1000, since=None)
    room.watchers.add(watcher)
    return room, watcher


def delivered(watcher: Watcher) -> list[str]:
    return list(watcher.outbox.items)


def test_frames_in_order_are_published_at_once() -> None:
    room, watcher = make_room()
    for seq in (1, 2, 3):
        room.offer(seq, frame_text(seq))
    assert delivered(watcher) == [frame_text(s) for s in (1, 2, 3)]
    assert room.published_seq == 3 and not room.behind
    assert room.latest == {"accuracy": 0.03}


def test_repeats_are_published_once() -> None:
    room, watcher = make_room()
    for seq in (1, 2, 1, 2, 3, 3):
        room.offer(seq, frame_text(seq))
    assert delivered(watcher) == [frame_text(s) for s in (1, 2, 3)]


def test_a_frame_ahead_of_a_gap_waits_for_the_gap() -> None:
    room, watcher = make_room(seq=10)
    room.offer(13, frame_text(13))
    room.offer(12, frame_text(12))
    assert delivered(watcher) == [] and room.behind and room.known_seq == 13
    room.offer(11, frame_text(11))  # from storage
    assert delivered(watcher) == [frame_text(s) for s in (11, 12, 13)]
    assert not room.behind and not room.pending


def test_a_marker_without_text_must_come_from_storage() -> None:
    room, watcher = make_room()
    room.offer(1, None)  # too big for the backplane
    assert room.behind and delivered(watcher) == []
    room.offer(2, frame_text(2))
    room.offer(1, frame_text(1))
    assert delivered(watcher) == [frame_text(1), frame_text(2)]


def test_past_the_pending_bound_frames_are_left_to_storage() -> None:
    room, watcher = make_room(max_pending=2)
    for seq in (2, 3, 4, 5):
        room.offer(seq, frame_text(seq))
    assert sorted(room.pending) == [2, 3]
    for seq in (1, 2, 3, 4, 5):  # storage has them all
        room.offer(seq, frame_text(seq))
    assert delivered(watcher) == [frame_text(s) for s in (1, 2, 3, 4, 5)]
    assert not room.behind and not room.pending


def test_stale_pending_entries_are_dropped_once_passed() -> None:
    room, _ = make_room()
    room.offer(3, frame_text(3))
    for seq in (1, 2, 3):  # storage delivers 3 before the pending copy is looked at
        room.offer(seq, frame_text(seq))
    assert not room.pending and room.published_seq == 3


def test_presence_sums_the_nodes() -> None:
    room, _ = make_room()
    assert room.presence().watchers == 1 and room.presence().mirror == "disconnected"
    room.remote["b"] = RemotePresence(watchers=2, mirror_since=0.0, heard_at=time.monotonic())
    room.remote["c"] = RemotePresence(watchers=0, mirror_since=5.0, heard_at=time.monotonic())
    presence = room.presence(joining=1)
    assert (presence.watchers, presence.mirror) == (4, "connected")


def test_channel_names_round_trip() -> None:
    session_id = uuid.uuid4()
    assert session_of(channel_of(session_id)) == session_id
    assert len(channel_of(session_id)) < 64  # a PostgreSQL identifier
    assert session_of("other") is None and session_of("mh_nothex") is None


class Recorder:
    """A Listener that records what the cluster hands it."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[object, ...]] = asyncio.Queue()

    def on_remote_frame(self, session_id: uuid.UUID, seq: int, text: str | None) -> None:
        self.got.put_nowait(("f", session_id, seq, text))

    def on_remote_presence(self, session_id: uuid.UUID, note: PresenceNote) -> None:
        self.got.put_nowait(("p", session_id, note))

    def on_remote_ended(self, session_id: uuid.UUID, last_seq: int, ended_at: datetime) -> None:
        self.got.put_nowait(("e", session_id, last_seq, ended_at))

    def on_remote_erased(self, session_id: uuid.UUID) -> None:
        self.got.put_nowait(("x", session_id))

    def on_backplane_reset(self) -> None:
        self.got.put_nowait(("reset",))


async def noop() -> None:
    return None


@pytest.fixture
async def two_nodes() -> AsyncIterator[tuple[Cluster, Cluster, Recorder, Recorder]]:
    broker = MemoryBroker()
    a = Cluster(MemoryBackplane(broker), heartbeat_s=60)
    b = Cluster(MemoryBackplane(broker), heartbeat_s=60)
    heard_a, heard_b = Recorder(), Recorder()
    await a.start(heard_a, lambda: None, noop)
    await b.start(heard_b, lambda: None, noop)
    yield a, b, heard_a, heard_b
    await a.stop()
    await b.stop()


async def test_messages_reach_the_other_node_not_the_sender(
    two_nodes: tuple[Cluster, Cluster, Recorder, Recorder],
) -> None:
    a, b, heard_a, heard_b = two_nodes
    session_id = uuid.uuid4()
    await a.subscribe(session_id)
    await b.subscribe(session_id)
    ended_at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    a.frame(session_id, 1, frame_text(1))
    a.presence(session_id, 1, 0, 2, 1234.5)
    a.ended(session_id, 1, ended_at)
    a.erased(session_id)
    async with asyncio.timeout(5):
        got = [await heard_b.got.get() for _ in range(4)]
    assert got == [
        ("f", session_id, 1, frame_text(1)),
        ("p", session_id, PresenceNote(a.node, 1, 0, 2, 1234.5)),
        ("e", session_id, 1, ended_at),
        ("x", session_id),
    ]
    assert heard_a.got.empty()  # its own messages are ignored


async def test_a_frame_too_big_for_the_backplane_becomes_a_marker(
    two_nodes: tuple[Cluster, Cluster, Recorder, Recorder],
) -> None:
    a, b, _, heard_b = two_nodes
    a.backplane.max_message_bytes = 200
    session_id = uuid.uuid4()
    await b.subscribe(session_id)
    big = encode(MetricsFrame(seq=7, ts=1.0, values={f"m{i}": 0.5 for i in range(40)})).decode()
    a.frame(session_id, 7, big)
    async with asyncio.timeout(5):
        assert await heard_b.got.get() == ("f", session_id, 7, None)


async def test_malformed_messages_are_ignored(
    two_nodes: tuple[Cluster, Cluster, Recorder, Recorder],
) -> None:
    a, b, _, heard_b = two_nodes
    session_id = uuid.uuid4()
    await b.subscribe(session_id)
    channel = channel_of(session_id)
    for junk in ("", "f", "f zz", "f zz notanint {}", "p zz 1 2", "q zz", "e zz 1 notadate"):
        a.backplane.publish(channel, junk)
    a.erased(session_id)  # a good one after the junk still arrives
    async with asyncio.timeout(5):
        assert await heard_b.got.get() == ("x", session_id)


async def test_unsubscribe_except_keeps_only_what_is_held(
    two_nodes: tuple[Cluster, Cluster, Recorder, Recorder],
) -> None:
    a, b, _, heard_b = two_nodes
    kept, dropped = uuid.uuid4(), uuid.uuid4()
    await b.subscribe(kept)
    await b.subscribe(dropped)
    await b.unsubscribe_except(lambda session_id: session_id == kept)
    a.erased(dropped)
    a.erased(kept)
    async with asyncio.timeout(5):
        assert await heard_b.got.get() == ("x", kept)
    assert heard_b.got.empty()


class Unplugged(MemoryBackplane):
    """An in-process backplane whose link can be marked down, as a networked one's is."""

    connected = True


def live_hub_with_remote_mirror(backplane: MemoryBackplane) -> tuple[LiveHub, Room]:
    """A LiveHub (not started: no database needed) holding one session whose mirror another
    node reported a long time ago."""
    hub = LiveHub(Settings(backplane_heartbeat_ms=1000), "postgresql://unused/none", backplane)
    room, _ = make_room()
    live = LiveSession(uuid.uuid4(), 0, False, room)
    hub.sessions.add(live)
    room.remote["other"] = RemotePresence(watchers=1, mirror_since=5.0, heard_at=0.0)
    return hub, room


async def test_silent_nodes_drop_out_of_presence() -> None:
    hub, room = live_hub_with_remote_mirror(Unplugged())
    await hub.peers.heartbeat()
    assert room.remote == {} and room.presence().mirror == "disconnected"


async def test_presence_is_kept_while_the_own_link_is_down_and_refreshed_on_reset() -> None:
    backplane = Unplugged()
    backplane.connected = False
    hub, room = live_hub_with_remote_mirror(backplane)
    await hub.peers.heartbeat()  # our link is down: the other node's silence proves nothing
    assert room.presence().mirror == "connected"
    backplane.connected = True
    hub.peers.on_backplane_reset()  # back: the other node gets a full expiry period to speak up
    await hub.peers.heartbeat()
    assert room.presence().mirror == "connected"
