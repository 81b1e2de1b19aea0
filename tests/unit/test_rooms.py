"""`hub.live.rooms`: a room publishes each seq once, in order, whatever its source (this
node's mirror, another node, storage), leaves to storage what it cannot hold, and sums the
nodes' presence. No sockets, no database."""

from __future__ import annotations

import time

import orjson

from hub.frames import encode
from hub.live.rooms import Room, Watcher
from tests.support.nodes import (
    delivered,
    frame,
    frame_text,
    make_room,
    seqs,
)


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
    room.hear("b", watchers=2, mirror_since=0.0, heard_at=time.monotonic())
    room.hear("c", watchers=0, mirror_since=5.0, heard_at=time.monotonic())
    presence = room.presence(joining=1)
    assert (presence.watchers, presence.mirror) == (4, "connected")


def test_a_frame_that_fails_to_decode_is_passed_on_as_it_is() -> None:
    """A frame this node cannot decode (a newer hub's, with a field this one rejects) goes
    to the watchers as it is, in its place, as a resume from storage would give it; only the
    snapshot's state misses what it says. No gap, no stall."""
    room = Room({"id": "s"}, [], replay_frames=10, seq=0, max_pending=100)
    watcher = Watcher(1000, None)
    room.add_watcher(watcher)
    newer = orjson.dumps(
        {"type": "metrics", "seq": 2, "ts": 1.0, "values": {"a": 1.0}, "quality": 0.9}
    ).decode()
    room.offer(1, encode(frame(1)).decode())
    room.offer(2, newer)
    room.offer(3, encode(frame(3)).decode())
    assert seqs(watcher) == [1, 2, 3]
    assert room.latest == {"accuracy": 0.03}  # frame 2's values are not known here
