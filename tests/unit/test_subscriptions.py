"""`/ws/watch` rules without sockets: subscriptions of one connection share its writer
round-robin, each is bounded and dropped alone (`resync`), overviews are conflated and sent
at most `hz` times a second, ended sessions leave after `ended`, a shutdown closes all."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from hub import closecodes
from hub.auth import Principal
from hub.frames import Ended, MetricsFrame, Subscribe, TaskFrame, encode
from hub.live.rooms import Room
from hub.live.subscriptions import Subscription, Subscriptions

THERAPIST = Principal(subject="t", role="therapist")


def connection(queue_frames: int = 1000, max_subscriptions: int = 10) -> Subscriptions:
    return Subscriptions(max_subscriptions, queue_frames, 1 << 20, overview_hz=4)


def room() -> Room:
    return Room({"id": "s"}, [], replay_frames=10, seq=0, max_pending=100)


def metrics(seq: int, **values: float) -> tuple[int, str, MetricsFrame]:
    frame = MetricsFrame(seq=seq, ts=1.0, values=values or {"accuracy": seq / 100})
    return seq, encode(frame).decode(), frame


def task(seq: int, status: str = "in_progress") -> tuple[int, str, TaskFrame]:
    frame = TaskFrame(
        seq=seq,
        ts=1.0,
        task_id=uuid.UUID(int=7),
        task_name="squat",
        event="status",
        status=status,  # type: ignore[arg-type]
    )
    return seq, encode(frame).decode(), frame


def subscribe(subs: Subscriptions, r: Room, overview_hz: int | None = None) -> Subscription:
    sub = subs.add(uuid.uuid4(), None, overview_hz)
    r.add_watcher(sub)
    return sub


def sent(subs: Subscriptions) -> list[dict[str, Any]]:
    return [orjson.loads(text) for text in subs.take()]


def frame_seqs(messages: list[dict[str, Any]], key: str) -> list[int]:
    return [
        f["seq"]
        for m in messages
        if m["type"] == "batch" and m["session_id"] == key
        for f in m["frames"]
    ]


def test_full_subscriptions_get_every_frame_in_order_tagged_with_their_session() -> None:
    subs, a, b = connection(), room(), room()
    sub_a, sub_b = subscribe(subs, a), subscribe(subs, b)
    for seq in range(1, 6):
        a.offer(*metrics(seq))
    b.offer(*metrics(1))
    a.broadcast_presence()
    a.offer(*metrics(6))
    out: list[dict[str, Any]] = []
    while batch := sent(subs):
        out += batch
    assert frame_seqs(out, sub_a.key) == [1, 2, 3, 4, 5, 6]
    assert frame_seqs(out, sub_b.key) == [1]
    kinds_a = [m["type"] for m in out if m["session_id"] == sub_a.key]
    assert kinds_a == ["batch", "presence", "batch"]  # presence keeps its place
    assert sub_a.delivered == 6 and sub_b.delivered == 1


def test_a_session_with_a_burst_delays_the_others_by_one_batch_at_most() -> None:
    subs, busy, quiet = connection(), room(), room()
    sub_busy, sub_quiet = subscribe(subs, busy), subscribe(subs, quiet)
    for seq in range(1, 901):
        busy.offer(*metrics(seq))
    quiet.offer(*metrics(1))
    first = sent(subs)
    assert frame_seqs(first, sub_quiet.key) == [1]
    assert len(frame_seqs(first, sub_busy.key)) == 500  # one batch, then the others' turn
    assert frame_seqs(sent(subs), sub_busy.key) == list(range(501, 901))


def test_a_subscription_past_its_bound_is_dropped_alone_with_resync_and_its_last_seq() -> None:
    subs, slow, other = connection(queue_frames=8), room(), room()
    sub_slow, sub_other = subscribe(subs, slow), subscribe(subs, other)
    slow.offer(*metrics(1))
    other.offer(*metrics(1))
    sent(subs)  # seq 1 of each is delivered
    for seq in range(2, 20):  # 18 frames queue up: past the bound of 8
        slow.offer(*metrics(seq))
    other.offer(*metrics(2))
    out = sent(subs)
    errors = [m for m in out if m["type"] == "error"]
    assert errors == [
        {
            "type": "error",
            "session_id": sub_slow.key,
            "code": "resync",
            "message": errors[0]["message"],
            "last_seq": 1,
        }
    ]
    assert frame_seqs(out, sub_slow.key) == []
    assert frame_seqs(out, sub_other.key) == [2]
    assert subs.gone() == [sub_slow] and sub_slow.key not in subs.subs
    slow.offer(*metrics(20))  # still in the room until the endpoint removes it: ignored
    assert sent(subs) == []
    assert subs.outbox.close_code is None  # the connection carries on


def test_an_overview_conflates_metrics_keeps_every_event_and_waits_for_its_interval() -> None:
    subs, r = connection(), room()
    sub = subscribe(subs, r, overview_hz=4)
    subs.tick(100.0)
    assert sent(subs) == []  # nothing new: no update
    for seq in range(1, 31):
        r.offer(*metrics(seq, accuracy=seq / 100, stability=0.5))
    r.offer(*task(31))
    r.broadcast_presence()
    r.offer(*metrics(32, accuracy=0.99))
    subs.tick(100.0)
    [update] = sent(subs)
    assert update["type"] == "overview" and update["session_id"] == sub.key
    assert update["last_seq"] == 32
    assert update["values"] == {"accuracy": 0.99, "stability": 0.5}
    assert update["task"] == {
        "task_id": str(uuid.UUID(int=7)),
        "task_name": "squat",
        "status": "in_progress",
    }
    assert [e["type"] for e in update["events"]] == ["task", "presence"]
    r.offer(*task(33, "success"))
    subs.tick(100.2)  # within 1/4 s of the last update: it waits
    assert sent(subs) == []
    subs.tick(100.25)
    [update] = sent(subs)
    assert update["values"] == {} and [e["seq"] for e in update["events"]] == [33]
    assert update["task"]["status"] == "success"


def test_an_ended_session_sends_ended_then_its_subscription_leaves() -> None:
    subs, r = connection(), room()
    sub = subscribe(subs, r)
    r.offer(*metrics(1))
    ended = encode(Ended(last_seq=1)).decode()
    r.close_watchers(closecodes.NORMAL, "session ended", flush=True, last=ended)
    out: list[dict[str, Any]] = []
    while batch := sent(subs):
        out += batch
    assert [m["type"] for m in out] == ["batch", "ended"]
    assert out[1]["session_id"] == sub.key
    assert subs.gone() == [sub]
    assert subs.outbox.close_code is None


def test_a_shutdown_closes_the_whole_connection() -> None:
    subs, r = connection(), room()
    subscribe(subs, r)
    r.close_watchers(closecodes.RESTART, flush=True)
    assert subs.outbox.close_code is closecodes.RESTART


def test_refusals_name_the_session_and_the_reason() -> None:
    subs = connection(max_subscriptions=1)
    mine = uuid.uuid4()
    mirror = Principal(subject="m", role="mirror", session_id=mine)

    def code(message: Subscribe, who: Principal = THERAPIST) -> str | None:
        refused = subs.refusal(message, who)
        return None if refused is None else orjson.loads(refused)["code"]

    assert code(Subscribe(session_id="nope")) == "unknown"
    assert code(Subscribe(session_id=str(uuid.uuid4())), mirror) == "forbidden"
    assert code(Subscribe(session_id=str(mine)), mirror) is None
    assert code(Subscribe(session_id="*", mode="overview"), mirror) == "forbidden"
    assert code(Subscribe(session_id="*")) == "unknown"  # the lobby is an overview
    assert code(Subscribe(session_id="*", mode="overview")) is None
    subs.reserve(str(mine))
    assert code(Subscribe(session_id=str(mine))) == "already_subscribed"
    assert code(Subscribe(session_id=str(uuid.uuid4()))) == "cap"
    subs.unreserve(str(mine))
    assert code(Subscribe(session_id=str(uuid.uuid4()))) is None


def test_unsubscribe_drops_what_was_queued_and_stops_the_session() -> None:
    subs, r = connection(), room()
    sub = subscribe(subs, r)
    r.offer(*metrics(1))
    assert subs.remove(sub.key) is sub
    r.offer(*metrics(2))
    assert sent(subs) == []
    assert subs.gone() == [sub]


def test_a_deleted_session_ends_its_subscription_as_unknown_not_resync() -> None:
    subs, r = connection(), room()
    sub = subscribe(subs, r)
    r.close_watchers(closecodes.UNKNOWN_SESSION, "session was deleted")
    [error] = sent(subs)
    assert (error["session_id"], error["code"]) == (sub.key, "unknown")
    assert subs.gone() == [sub] and subs.outbox.close_code is None


def test_a_room_that_lost_track_drops_its_subscriptions_with_resync() -> None:
    subs, r = connection(), room()
    sub = subscribe(subs, r)
    r.offer(*metrics(1))
    r.offer(*metrics(2))
    sent(subs)
    r.close_watchers(closecodes.RESYNC)
    [error] = sent(subs)
    assert (error["code"], error["last_seq"]) == ("resync", 2)
    assert subs.gone() == [sub]
