"""The live session without sockets or storage: its seq rules, its mirror, what is stored,
its end, and leaving memory (pins, drop, erase)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from hub import closecodes
from hub.frames import MetricsFrame, ProtocolError, encode
from hub.live.rooms import Room
from hub.live.sendqueue import Watcher
from hub.live.session import LiveSession, MirrorLink


def text(seq: int) -> str:
    return encode(MetricsFrame(seq=seq, ts=1.0, values={"accuracy": seq / 100})).decode()


def session(last_seq: int = 0, ended: bool = False) -> tuple[LiveSession, Watcher]:
    room = Room({"id": "s", "ended_at": None}, [], replay_frames=2, seq=last_seq, max_pending=10)
    live = LiveSession(uuid.uuid4(), last_seq, ended, room)
    watcher = Watcher(bound=100, since=None)
    room.add_watcher(watcher)
    return live, watcher


def presences(watcher: Watcher) -> list[str]:
    return [json.loads(t)["mirror"] for t in watcher.outbox.items if '"presence"' in t]


def test_only_the_next_seq_is_taken() -> None:
    live, _ = session(last_seq=4)
    live.check_seq(5)
    live.accepted(5)
    with pytest.raises(ProtocolError) as repeat:
        live.check_seq(5)
    assert (repeat.value.code, repeat.value.expected_seq) == ("duplicate_seq", 6)
    with pytest.raises(ProtocolError) as gap:
        live.check_seq(8)
    assert (gap.value.code, gap.value.expected_seq) == ("seq_gap", 6)
    assert live.last_accepted == 5 and live.stored_seq == 4


def test_a_new_mirror_replaces_the_old_one_and_presence_follows() -> None:
    live, watcher = session()
    old, new = MirrorLink(bound=8), MirrorLink(bound=8)
    live.attach_mirror(old, since=1.0)
    live.attach_mirror(new, since=2.0)
    assert old.outbox.close_code is closecodes.REPLACED
    assert live.mirror is new and live.mirror_since == 2.0
    assert not live.detach_mirror(old)  # a replaced connection lets go of nothing
    assert live.mirror is new
    assert live.detach_mirror(new)
    assert live.mirror is None and live.mirror_since == 0.0
    # Presence is derived from the session's mirror, not stored apart.
    assert presences(watcher) == ["connected", "connected", "disconnected"]


def test_storing_acks_the_mirror_and_trims_the_room() -> None:
    live, _ = session()
    link = MirrorLink(bound=8)
    live.attach_mirror(link, since=1.0)
    for seq in range(1, 6):
        live.check_seq(seq)
        live.accepted(seq)
        live.room.offer(seq, text(seq))
    assert not live.idle  # frames accepted and not stored
    live.on_stored(3)
    assert (link.acked, live.stored_seq) == (3, 3)
    assert live.room.oldest_logged() == 4  # trimmed only below the stored seq
    live.on_stored(2)  # acks are cumulative: an older one changes nothing
    assert link.acked == 3
    live.detach_mirror(link)
    live.on_stored(5)
    assert live.idle


def test_storage_ahead_of_the_session_moves_its_next_seq() -> None:
    live, _ = session(last_seq=2)
    live.adopt_stored(7)  # another node's mirror connection stored up to 7
    assert (live.last_accepted, live.stored_seq) == (7, 7)
    live.check_seq(8)


def test_pins_keep_a_session_from_being_idle() -> None:
    live, _ = session()
    live.pin()
    live.pin()
    live.unpin()
    assert not live.idle
    live.unpin()
    assert live.idle


def test_an_end_waits_for_the_room_to_publish_its_last_frame() -> None:
    live, _ = session()
    at = datetime.now(UTC)
    assert not live.end_after_seq(2, at)  # the room has published nothing yet
    assert live.ended and live.room.behind
    assert live.end_due() is None
    live.room.offer(1, text(1))
    assert live.end_due() is None
    live.room.offer(2, text(2))
    assert live.end_due() == (2, at)
    assert live.end_due() is None  # told once


def test_an_end_after_what_is_published_is_due_at_once() -> None:
    live, _ = session(last_seq=3)
    at = datetime.now(UTC)
    assert live.end_after_seq(3, at)
    assert live.end_due() == (3, at)


def test_erasing_closes_the_mirror_and_every_watcher_for_good() -> None:
    live, watcher = session()
    link = MirrorLink(bound=8)
    live.attach_mirror(link, since=1.0)
    live.erase()
    assert live.erased
    assert link.outbox.close_code is closecodes.UNKNOWN_SESSION
    assert watcher.outbox.close_code is closecodes.UNKNOWN_SESSION


def test_a_dropped_session_is_marked_so() -> None:
    live, _ = session()
    assert not live.dropped
    live.drop()
    assert live.dropped
