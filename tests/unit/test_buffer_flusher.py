"""The write buffer and the flusher share storage fairly between sessions (no sockets here;
the flusher writes to the real PostgreSQL of the test run)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.frames import MetricsFrame
from hub.live.buffer import BACKLOG_BATCHES, PendingFrame, WriteBuffer
from hub.live.flusher import Flusher
from hub.live.limits import Limits
from hub.live.rooms import Room
from hub.live.sendqueue import SendQueue
from hub.storage.frames import asyncpg_dsn
from hub.storage.live_store import LiveStore

A, B, C = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
WAIT = 10.0


def pending(session_id: uuid.UUID, seq: int, size: int = 10) -> PendingFrame:
    return PendingFrame(
        session_id=session_id,
        seq=seq,
        received_at=datetime.now(UTC),
        text=f'{{"type":"metrics","seq":{seq},"ts":1.0,"values":{{"x":{"1" * size}}}}}',
        task=None,
    )


def fill(buffer: WriteBuffer, session_id: uuid.UUID, count: int, first: int = 1) -> None:
    for seq in range(first, first + count):
        buffer.put(pending(session_id, seq))


def per_session(batch: Sequence[PendingFrame]) -> dict[uuid.UUID, list[int]]:
    seqs: dict[uuid.UUID, list[int]] = {}
    for frame in batch:
        seqs.setdefault(frame.session_id, []).append(frame.seq)
    return seqs


# --- the buffer ---------------------------------------------------------------------------


async def test_a_batch_takes_a_fair_share_from_every_waiting_session() -> None:
    buffer = WriteBuffer(100_000, 1 << 30, flush_frames=100)
    fill(buffer, A, 5_000)  # a flooding mirror's backlog
    fill(buffer, B, 30)
    fill(buffer, C, 3)
    batch = await buffer.next_batch(max_age_s=1.0)
    seqs = per_session(batch)
    # The quiet sessions get everything they have; the flood a flush's worth, no more (its
    # batch must not take long for the others).
    assert seqs[B] == list(range(1, 31)) and seqs[C] == [1, 2, 3]
    assert seqs[A] == list(range(1, 101))


async def test_backlogs_share_a_batch_equally_up_to_its_size() -> None:
    buffer = WriteBuffer(100_000, 1 << 30, flush_frames=30)  # a batch: up to 300 frames
    sessions = [uuid.uuid4() for _ in range(BACKLOG_BATCHES * 2)]
    for session_id in sessions:
        fill(buffer, session_id, 1_000)
    seqs = per_session(await buffer.next_batch(max_age_s=1.0))
    assert [len(seqs[s]) for s in sessions] == [15] * len(sessions)
    for session_id in (A, B, C):
        fill(buffer, session_id, 10 + session_id.int % 7)  # as many ready as the flush size
    seqs = per_session(buffer.take())
    assert seqs.keys() == {A, B, C}  # the others have their batch in flight


async def test_a_session_with_a_batch_in_flight_waits_and_the_others_go_on() -> None:
    buffer = WriteBuffer(100_000, 1 << 30, flush_frames=10)
    fill(buffer, A, 5)
    first = buffer.take()
    assert per_session(first) == {A: [1, 2, 3, 4, 5]}
    fill(buffer, A, 3, first=6)  # A's newer frames wait for A's batch to commit
    fill(buffer, B, 2)
    second = buffer.take()
    assert per_session(second) == {B: [1, 2]}
    await buffer.release(first)
    assert per_session(buffer.take()) == {A: [6, 7, 8]}
    assert len(buffer) == 5  # still counted until released
    await buffer.release(second)
    assert len(buffer) == 3


async def test_an_abandoned_batch_is_taken_again() -> None:
    buffer = WriteBuffer(100, 1 << 30, flush_frames=10)
    fill(buffer, A, 4)
    batch = buffer.take()
    assert buffer.take() == []
    buffer.abandon(batch)
    assert [f.seq for f in buffer.take()] == [1, 2, 3, 4]


async def test_one_sessions_backlog_pauses_only_that_session() -> None:
    buffer = WriteBuffer(
        10_000, 1 << 30, flush_frames=100, session_max_frames=50, session_max_bytes=1 << 30
    )
    fill(buffer, A, 50)
    assert not buffer.fits(A, 1, 100)
    assert buffer.fits(B, 500, 100_000)  # other sessions are not affected
    waiting = asyncio.create_task(buffer.wait_for_room(A, 1, 100))
    await asyncio.sleep(0)
    assert not waiting.done()
    batch = buffer.take()
    await asyncio.sleep(0)
    assert not waiting.done()  # taken into a batch is not yet stored: still counted
    await buffer.release(batch)
    async with asyncio.timeout(WAIT):
        await waiting


async def test_the_per_session_bound_counts_bytes() -> None:
    buffer = WriteBuffer(
        10_000, 1 << 30, flush_frames=100, session_max_frames=10_000, session_max_bytes=2_000
    )
    fill(buffer, A, 1)
    size = len(pending(A, 1).text)
    fill(buffer, A, 2_000 // size - 1, first=2)
    assert buffer.fits(A, 1, 2_000 - buffer.session_bytes(A))
    assert not buffer.fits(A, 1, 2_000 - buffer.session_bytes(A) + 1)
    assert buffer.fits(B, 1, 60_000)  # an empty queue takes any one message
    assert not buffer.fits(A, 1, 60_000)


async def test_the_global_bound_still_holds_over_all_sessions() -> None:
    buffer = WriteBuffer(100, 1 << 30, flush_frames=10, session_max_frames=60)
    fill(buffer, A, 60)
    fill(buffer, B, 40)
    assert not buffer.fits(C, 1, 10)
    assert buffer.peak_frames == 100


async def test_the_buffers_books_stay_right_whatever_the_order_of_events() -> None:
    """Random puts, takes, commits (whole or per session), abandons and paces: the counts the
    flusher waits on always match the queues, and every frame leaves in seq order."""
    rng = random.Random(7)
    buffer = WriteBuffer(10**6, 1 << 40, flush_frames=20, pace_s=0.001)
    sessions = [uuid.uuid4() for _ in range(5)]
    next_seq = dict.fromkeys(sessions, 1)
    stored = {s: 0 for s in sessions}
    in_flight: list[list[PendingFrame]] = []
    for _ in range(3_000):
        action = rng.random()
        if action < 0.5:
            session_id = rng.choice(sessions)
            count = rng.randint(1, 30)
            fill(buffer, session_id, count, first=next_seq[session_id])
            next_seq[session_id] += count
        elif action < 0.7:
            if batch := buffer.take():
                in_flight.append(batch)
        elif action < 0.9 and in_flight:
            batch = in_flight.pop(rng.randrange(len(in_flight)))
            parts = per_session(batch)
            if rng.random() < 0.5:  # stored apart, session by session
                for session_id in parts:
                    await buffer.release([f for f in batch if f.session_id == session_id])
            else:
                await buffer.release(batch)
            for session_id, seqs in parts.items():
                assert seqs[0] == stored[session_id] + 1, "out of order"
                stored[session_id] = seqs[-1]
        elif action < 0.95 and in_flight:
            buffer.abandon(in_flight.pop(rng.randrange(len(in_flight))))
        else:
            await asyncio.sleep(0.002)  # paced sessions come back
        queues = buffer.queues()
        assert buffer.ready == sum(q.waiting for q in queues)
        assert len(buffer) == sum(len(q.frames) for q in queues)
        assert buffer.ready_signalled == (buffer.ready > 0)
    for batch in in_flight:
        await buffer.release(batch)
    buffer.unpace()
    while batch := buffer.take():
        await buffer.release(batch)
    assert len(buffer) == 0 and buffer.ready == 0


# --- bytes in memory ----------------------------------------------------------------------


def test_a_watcher_queue_is_bounded_in_bytes() -> None:
    outbox = SendQueue(bound=1_000, max_bytes=1_000)
    assert outbox.push("x" * 600)
    assert outbox.push("y" * 400)
    assert not outbox.push("z")
    assert outbox.close_code is not None and outbox.close_code.code == 4008


def test_a_watcher_queue_counts_what_the_writer_took() -> None:
    outbox = SendQueue(bound=1_000, max_bytes=1_000)
    for _ in range(100):  # a watcher that keeps up, never quite empty
        assert outbox.push("x" * 600)
        assert outbox.pop() == "x" * 600
    assert outbox.queued_bytes == 0 and outbox.close_code is None


def room(replay_frames: int = 1_000, replay_bytes: int = 1 << 20) -> Room:
    return Room({}, [], replay_frames, seq=0, max_pending=1_000, replay_bytes=replay_bytes)


def test_the_replay_log_is_bounded_in_bytes_below_the_stored_seq() -> None:
    r = room(replay_frames=1_000, replay_bytes=10_000)
    big = "x" * 1_000
    for seq in range(1, 51):
        r.offer(seq, big, MetricsFrame(seq=seq, ts=1.0, values={"a": 1.0}))
    r.trim(stored_seq=20)  # frames not yet stored stay, whatever their size
    assert r.oldest_logged() == 21
    r.trim(stored_seq=50)
    assert r.log_bytes <= 10_000 and r.oldest_logged() == 41


def test_frames_waiting_behind_a_gap_are_bounded_in_bytes() -> None:
    r = room(replay_bytes=5_000)
    for seq in range(2, 20):
        r.offer(seq, "x" * 1_000)
    assert len(r.pending) == 5 and r.pending_bytes == 5_000
    r.offer(1, "y")
    assert r.published_seq == 6 and r.pending_bytes == 0


# --- the state limits ---------------------------------------------------------------------


def test_a_room_refuses_what_would_pass_the_state_limits() -> None:
    from hub.frames import TaskFrame

    limits = Limits(tasks=2, task_metrics=3, session_metrics=4, state_bytes=10_000)
    r = room()

    def task(seq: int, task_id: uuid.UUID, **metrics: float) -> TaskFrame:
        return TaskFrame(
            seq=seq, ts=1.0, task_id=task_id, task_name="t", event="status", status="pending",
            metrics=metrics,
        )  # fmt: skip

    one, two, three = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    frames = [task(1, one, a=1, b=1), task(2, two), task(3, one, a=2, c=1)]
    for f in frames:
        assert r.refusal(f, limits) is None
        r.offer(f.seq, "{}", f)
    refused = r.refusal(task(4, three), limits)
    assert refused is not None and refused.code == "too_many_tasks"
    assert refused.seq == refused.expected_seq == 4
    refused = r.refusal(task(4, one, d=1), limits)
    assert refused is not None and refused.code == "too_many_metric_names"
    assert r.refusal(task(4, two, d=1), limits) is None  # a 4th name in the session
    r.offer(4, "{}", task(4, two, d=1))
    refused = r.refusal(MetricsFrame(seq=5, ts=1.0, values={"e": 1.0}), limits)
    assert refused is not None and refused.code == "too_many_metric_names"
    assert r.refusal(MetricsFrame(seq=5, ts=1.0, values={"a": 3.0}), limits) is None
    small = Limits(state_bytes=r.state_bytes + 30)
    refused = r.refusal(MetricsFrame(seq=5, ts=1.0, values={"abc": 1.0}), small)
    assert refused is not None and refused.code == "session_state_too_large"
    assert r.refusal(MetricsFrame(seq=5, ts=1.0, values={"a": 1.0}), small) is None


def test_state_bytes_bound_the_snapshot() -> None:
    from hub.frames import TaskFrame

    r = room()
    for seq in range(1, 41):
        metrics = {f"m{seq}_{i}": -1.2345678901234567e12 for i in range(20)}
        f = TaskFrame(
            seq=seq, ts=1.0, task_id=uuid.uuid4(), task_name="raise_hand", event="finished",
            status="success", duration_seconds=12345.678901234, metrics=metrics,
        )  # fmt: skip
        r.offer(seq, "{}", f)
    r.offer(41, "{}", MetricsFrame(seq=41, ts=1.0, values={f"v{i}": 1e12 for i in range(50)}))
    assert len(r.snapshot(41, False)) <= r.state_bytes


# --- the flusher, on the real PostgreSQL ---------------------------------------------------


@pytest.fixture
async def pool(database_url: str, clean_db: AsyncEngine) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(asyncpg_dsn(database_url), min_size=0, max_size=6) as p:
        await p.executemany(
            "INSERT INTO sessions (id, child_name) VALUES ($1, 'x')", [(s,) for s in (A, B, C)]
        )
        yield p


def flusher_on(pool: asyncpg.Pool) -> tuple[WriteBuffer, Committed, Flusher]:
    """A buffer, what its flusher commits, and the flusher (not started), isolating after a
    lock wait of 0.1 s."""
    buffer = WriteBuffer(100_000, 1 << 30, flush_frames=50)
    committed = Committed()
    flusher = Flusher(buffer, LiveStore(pool), 0.02, committed, lambda ids: None, isolate_s=0.1)
    return buffer, committed, flusher


@contextlib.asynccontextmanager
async def row_locked(pool: asyncpg.Pool, table: str, row_id: uuid.UUID) -> AsyncIterator[None]:
    """The row `row_id` of `table` locked by another transaction (as while a session is
    being erased) until the block ends."""
    async with pool.acquire() as locker, locker.transaction():
        await locker.execute(f"SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE", row_id)
        yield


class Committed:
    """Records each commit the flusher reports, and when."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, dict[uuid.UUID, list[int]]]] = []
        self.changed = asyncio.Event()

    def __call__(self, batch: Sequence[PendingFrame]) -> None:
        self.batches.append((time.monotonic(), per_session(batch)))
        self.changed.set()

    def last_seq(self, session_id: uuid.UUID) -> int:
        return max((s[session_id][-1] for _, s in self.batches if session_id in s), default=0)

    async def wait(self, session_id: uuid.UUID, seq: int) -> float:
        async with asyncio.timeout(WAIT):
            while self.last_seq(session_id) < seq:
                self.changed.clear()
                await self.changed.wait()
        return time.monotonic()


async def test_the_flusher_takes_from_every_session_round_robin(pool: asyncpg.Pool) -> None:
    buffer = WriteBuffer(100_000, 1 << 30, flush_frames=50)
    committed = Committed()
    flusher = Flusher(buffer, LiveStore(pool), 0.05, committed, lambda ids: None)
    fill(buffer, A, 3_000)  # a backlog of 60 flushes
    fill(buffer, B, 5)
    flusher.start()
    try:
        await committed.wait(B, 5)
        fill(buffer, B, 5, first=6)  # B goes on streaming while A's backlog drains
        fill(buffer, C, 5)
        await committed.wait(B, 10)
        await committed.wait(C, 5)
        a_then = committed.last_seq(A)
        await committed.wait(A, 3_000)
    finally:
        await flusher.stop()
    first = committed.batches[0][1]
    assert first == {A: list(range(1, 51)), B: [1, 2, 3, 4, 5]}
    assert a_then <= 200, "B and C waited for A's backlog"
    assert all(len(seqs.get(A, [])) <= 50 for _, seqs in committed.batches)
    count = await pool.fetchval("SELECT count(*) FROM frames")
    assert count == 3_015 and len(buffer) == 0


async def test_a_slow_batch_without_a_lock_is_stored_whole(pool: asyncpg.Pool) -> None:
    # Each INSERT into frames takes 0.3 s (as on a busy machine or a slow disk): past
    # isolate_s, but nothing waits on a lock, so storing the batch per session would only
    # make more work; it is stored as it is, in one transaction.
    await pool.execute(
        "CREATE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;"
        " CREATE TRIGGER test_slow_insert BEFORE INSERT ON frames"
        " FOR EACH STATEMENT EXECUTE FUNCTION test_slow_insert()"
    )
    buffer, committed, flusher = flusher_on(pool)
    try:
        fill(buffer, A, 10)
        fill(buffer, B, 10)
        flusher.start()
        await committed.wait(A, 10)
        await committed.wait(B, 10)
    finally:
        await flusher.stop()
        await pool.execute(
            "DROP TRIGGER test_slow_insert ON frames; DROP FUNCTION test_slow_insert()"
        )
    assert flusher.isolated == 0
    assert [seqs for _, seqs in committed.batches] == [
        {A: list(range(1, 11)), B: list(range(1, 11))}
    ]


async def test_a_locked_session_alone_in_its_batch_does_not_hold_the_flusher(
    pool: asyncpg.Pool,
) -> None:
    buffer, committed, flusher = flusher_on(pool)
    async with row_locked(pool, "sessions", A):
        fill(buffer, A, 50)  # a full batch: the flusher takes it at once, A alone
        flusher.start()
        await asyncio.sleep(0)  # the flusher's first step: it takes A's batch
        assert buffer.ready == 0, "A's batch was not taken alone"
        fill(buffer, B, 10)
        sent = time.monotonic()
        waited = await committed.wait(B, 10) - sent
        assert waited < 0.1 + 0.5, "B waited for A's lock"
        assert committed.last_seq(A) == 0 and flusher.isolated == 1
    try:
        await committed.wait(A, 50)  # the lock is gone: A is stored too
    finally:
        await flusher.stop()
    assert await pool.fetchval("SELECT count(*) FROM frames") == 60


async def test_a_lock_timeout_from_the_servers_settings_is_retried_like_any_failure(
    database_url: str, clean_db: AsyncEngine
) -> None:
    # An operator's lock_timeout (here 50 ms, for every statement of the pool's connections)
    # makes a store that waits on a lock fail: the flusher retries it until it commits, its
    # loop and its drain go on, and only its own first attempt splits a batch.
    async with asyncpg.create_pool(
        asyncpg_dsn(database_url), min_size=0, max_size=6, server_settings={"lock_timeout": "50"}
    ) as pool:
        await pool.executemany(
            "INSERT INTO sessions (id, child_name) VALUES ($1, 'x')", [(s,) for s in (A, B)]
        )
        buffer, committed, flusher = flusher_on(pool)
        async with row_locked(pool, "sessions", A):
            fill(buffer, A, 10)
            fill(buffer, B, 10)
            flusher.start()
            await committed.wait(B, 10)  # A's lock held the first batch; B went on without it
            fill(buffer, A, 5, first=11)
            draining = asyncio.create_task(flusher.drain())
            done, _ = await asyncio.wait({draining}, timeout=0.3)
            assert not done, "the drain gave up on A's lock (or stored through it)"
            assert committed.last_seq(A) == 0 and flusher.failures > 0
        async with asyncio.timeout(WAIT):
            await draining  # raises if the drain failed
        await flusher.stop()
        assert committed.last_seq(A) == 15 and len(buffer) == 0
        assert await pool.fetchval("SELECT count(*) FROM frames") == 25


async def test_a_batchs_lock_timeout_ends_with_its_transaction(
    database_url: str, pool: asyncpg.Pool
) -> None:
    from hub.frames import TaskFrame

    one = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=1)
    store = LiveStore(one)  # one connection: the one every statement below runs on
    task = TaskFrame(
        seq=2, ts=1.0, task_id=uuid.uuid4(), task_name="raise_hand", event="started",
        status="in_progress",
    )  # fmt: skip
    with_task = PendingFrame(A, 2, datetime.now(UTC), '{"type":"task","seq":2,"ts":1.0}', task)
    try:
        for batch in ([pending(A, 1)], [with_task]):  # one statement; a transaction of several
            await store.store_batch(batch, lock_timeout_s=0.1)
            assert await one.fetchval("SHOW lock_timeout") == "0"
    finally:
        await one.close()
    assert await pool.fetchval("SELECT count(*) FROM frames") == 2


async def test_a_locked_task_row_splits_a_batch_and_its_task_is_stored_once(
    pool: asyncpg.Pool,
) -> None:
    # The lock timeout holds for every statement of a batch with task frames (one
    # transaction): a task row locked elsewhere splits the batch like a locked session.
    from hub.frames import TaskFrame, encode

    task_id = uuid.uuid4()

    def task_frame(seq: int, status: str, **metrics: float) -> PendingFrame:
        frame = TaskFrame(
            seq=seq, ts=1.0, task_id=task_id, task_name="raise_hand", event="status",
            status=status, metrics=metrics,
        )  # fmt: skip
        return PendingFrame(A, seq, datetime.now(UTC), encode(frame).decode(), frame)

    buffer, committed, flusher = flusher_on(pool)
    buffer.put(task_frame(1, "pending"))
    flusher.start()
    try:
        await committed.wait(A, 1)  # the task row exists
        async with row_locked(pool, "tasks", task_id):
            buffer.put(task_frame(2, "in_progress", accuracy=0.5))
            fill(buffer, B, 10)
            sent = time.monotonic()
            waited = await committed.wait(B, 10) - sent
            assert waited < 0.1 + 0.5, "B waited for A's task row"
            assert committed.last_seq(A) == 1 and flusher.isolated == 1
        await committed.wait(A, 2)
    finally:
        await flusher.stop()
    row = await pool.fetchrow("SELECT status, metrics FROM tasks WHERE id = $1", task_id)
    assert row["status"] == "in_progress" and orjson.loads(row["metrics"]) == {"accuracy": 0.5}
    assert await pool.fetchval("SELECT count(*) FROM frames") == 12


async def test_a_slow_session_holds_the_others_back_one_batch_at_most(
    pool: asyncpg.Pool,
) -> None:
    buffer, committed, flusher = flusher_on(pool)
    flusher.start()
    async with row_locked(pool, "sessions", A):
        # A's session row is locked (as while it is being erased): storing A's frames waits
        # on it (the foreign key check), and so would every session in A's batch.
        fill(buffer, A, 10)
        fill(buffer, B, 10)
        sent = time.monotonic()
        first = await committed.wait(B, 10) - sent  # in A's batch: isolate_s late
        fill(buffer, B, 10, first=11)  # B's next frames, while A is still stuck
        sent = time.monotonic()
        later = await committed.wait(B, 20) - sent  # in batches without A: not late at all
        print(f"B committed {first * 1000:.0f} ms, then {later * 1000:.0f} ms after queuing")
        assert first < 0.1 + 0.5, "B waited for A's lock"
        assert later < 0.5
        assert committed.last_seq(A) == 0 and flusher.isolated >= 1
    try:
        await committed.wait(A, 10)  # the lock is gone: A is stored too
    finally:
        await flusher.stop()
    assert await pool.fetchval("SELECT count(*) FROM frames") == 30
