"""The cluster's messages over the in-process backplane: channel names, who hears what,
markers for frames too big, malformed messages, and listener errors kept in the callback."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from hub.frames import MetricsFrame, ProtocolError, encode
from hub.live.backplane.memory import MemoryBackplane, MemoryBroker
from hub.live.cluster import Cluster, PresenceNote, channel_of, session_of
from hub.live.rooms import Room
from tests.support.nodes import DrivenBackplane, frame_text


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


async def test_a_lone_node_does_not_publish_its_frames_but_the_rest() -> None:
    # A hub process on its own (the in-process backplane with a broker of its own): no other
    # node can hear a frame, so none is published; presence, ends and erasures still are.
    backplane = MemoryBackplane()
    assert backplane.solitary and not MemoryBackplane(MemoryBroker()).solitary
    cluster = Cluster(backplane, heartbeat_s=60)
    await cluster.start(Recorder(), lambda: None, noop)
    # What goes out on its broker, heard as a transport's subscriber would hear it.
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = MemoryBackplane(backplane.broker)
    await listener.start(lambda channel, message: heard.put_nowait(message), lambda: None)
    session_id = uuid.uuid4()
    await listener.subscribe(channel_of(session_id))
    try:
        cluster.frame(session_id, 1, frame_text(1))
        cluster.presence(session_id, 1, 0, 2, 1234.5)
        cluster.ended(session_id, 1, datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
        cluster.erased(session_id)
        async with asyncio.timeout(5):
            kinds = [(await heard.get()).split(" ", 1)[0] for _ in range(3)]
        assert kinds == ["p", "e", "x"] and heard.empty()
    finally:
        await cluster.stop()
        await listener.close()


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


async def test_exceptions_from_a_listener_stay_in_the_cluster_callback() -> None:
    """Whatever a handler raises stays in the cluster's delivery callback: the backplane's
    delivery loop goes on."""
    room = Room({"id": "s"}, [], replay_frames=10, seq=0, max_pending=100)

    class Listener:
        def on_remote_frame(self, session_id: uuid.UUID, seq: int, text: str | None) -> None:
            room.offer(seq, text)

        def on_remote_presence(self, *args: Any) -> None: ...
        def on_remote_ended(self, *args: Any) -> None: ...
        def on_remote_erased(self, *args: Any) -> None: ...
        def on_backplane_reset(self) -> None: ...

    backplane = DrivenBackplane()
    cluster = Cluster(backplane, heartbeat_s=60)

    async def noop() -> None:
        return None

    await cluster.start(Listener(), lambda: None, noop)
    try:
        bad = orjson.dumps({"type": "metrics", "seq": 1, "ts": 1.0, "values": {}, "x": 1})
        backplane.deliver(channel_of(uuid.uuid4()), f"f othernode 1 {bad.decode()}")
    except ProtocolError:
        pytest.fail("a listener exception escaped the cluster's delivery callback")
    finally:
        await cluster.stop()
