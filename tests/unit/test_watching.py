"""A watcher's catch-up plan, without a socket: a snapshot for a new watcher, every frame
after `since` (storage, then memory) for one resuming, and the end when it came before."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from hub.frames import MetricsFrame, encode
from hub.live.rooms import Room
from hub.live.session import LiveSession
from hub.live.watching import plan_catch_up


def text(seq: int) -> str:
    return encode(MetricsFrame(seq=seq, ts=1.0, values={"accuracy": seq / 100})).decode()


def session_with(published: int, stored: int, replay_frames: int = 3) -> LiveSession:
    """A session whose room published 1..`published`, `stored` of them stored."""
    room = Room({"id": "s", "ended_at": None}, [], replay_frames, seq=0, max_pending=10)
    live = LiveSession(uuid.uuid4(), 0, False, room)
    for seq in range(1, published + 1):
        live.check_seq(seq)
        live.accepted(seq)
        room.offer(seq, text(seq))
    live.on_stored(stored)
    return live


def seqs(texts: list[str]) -> list[int]:
    return [json.loads(t)["seq"] for t in texts]


def test_a_new_watcher_gets_a_snapshot() -> None:
    plan = plan_catch_up(session_with(published=5, stored=5), since=None)
    assert plan.stored is None and not plan.ended and plan.last_seq == 5
    (snapshot,) = plan.memory
    assert json.loads(snapshot)["type"] == "snapshot"
    assert json.loads(snapshot)["last_seq"] == 5


def test_a_resume_within_memory_reads_no_storage() -> None:
    live = session_with(published=10, stored=10)  # the log keeps 8..10
    plan = plan_catch_up(live, since=7)
    assert plan.stored is None and seqs(plan.memory) == [8, 9, 10]


def test_a_resume_older_than_memory_reads_the_rest_from_storage() -> None:
    live = session_with(published=10, stored=10)
    plan = plan_catch_up(live, since=2)
    assert plan.stored == (2, 7) and seqs(plan.memory) == [8, 9, 10]


def test_unstored_frames_stay_in_memory_for_the_resume() -> None:
    live = session_with(published=10, stored=4)  # the log is trimmed only up to seq 4
    plan = plan_catch_up(live, since=2)
    assert plan.stored == (2, 4) and seqs(plan.memory) == list(range(5, 11))


def test_a_resume_at_the_head_gets_nothing() -> None:
    plan = plan_catch_up(session_with(published=4, stored=4), since=4)
    assert plan.stored is None and plan.memory == []


def test_ended_before_the_join_is_said_after_the_catch_up() -> None:
    live = session_with(published=3, stored=3)
    assert live.end_after_seq(3, datetime.now(UTC))
    assert live.end_due() is not None  # told to the watchers that were there
    assert plan_catch_up(live, since=None).ended


def test_an_end_still_waiting_for_frames_is_not_said_at_the_join() -> None:
    live = session_with(published=3, stored=3)
    assert not live.end_after_seq(5, datetime.now(UTC))  # frames 4 and 5 not here yet
    plan = plan_catch_up(live, since=1)
    assert not plan.ended  # it reaches the watcher through its queue, after 4 and 5
    assert plan.last_seq == 3
