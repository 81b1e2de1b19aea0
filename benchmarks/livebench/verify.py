"""Did every frame arrive, once and in order, and get acked? The books the load generator
keeps: per mirror, what it sent (each seq's send time) and how far the server acked it; per
watcher and mirror it follows, which seqs arrived. Then the totals of a run, and the `max`
criteria a run must meet to pass.

A watcher of another kind (one that follows many sessions, or gets frames in batches) keeps
one `Received` per mirror it follows and calls `record` for every frame it gets."""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Iterable

from .results import GENERATOR_OK_SHARE, Result

P99_LIMIT_MS = 250.0


class Sent:
    """One mirror's frames: seq 1 … `sent` went out, `sent_at[seq]` is the `ts` each carried,
    and the server acked up to `acked`."""

    __slots__ = ("acked", "sent", "sent_at")

    def __init__(self, frames: int) -> None:
        self.sent = 0
        self.sent_at = array("d", bytes(8 * (frames + 1)))  # by seq: the frame's `ts`
        self.acked = 0

    def record_ack(self, seq: int, received: float, latencies: array[float]) -> None:
        """An `ack` of `seq` received at `received`: it covers every frame up to seq, so each
        frame it newly covers gets its ack latency (receive time - send time)."""
        seq, sent_at = min(seq, self.sent), self.sent_at
        if seq > self.acked:
            latencies.extend(received - sent_at[s] for s in range(self.acked + 1, seq + 1))
            self.acked = seq


class Received:
    """The frames of one mirror (`of`) that one watcher received: how many in all, how many
    distinct seqs, repeats (duplicates), and seqs lower than one already received that it had
    not seen (out of order)."""

    __slots__ = ("distinct", "duplicates", "last", "of", "out_of_order", "received", "seen")

    def __init__(self, of: Sent, frames: int) -> None:
        self.of = of
        self.seen = bytearray(frames + 2)
        self.last = 0
        self.distinct = self.received = self.duplicates = self.out_of_order = 0

    def record(self, seq: int) -> None:
        self.received += 1
        seen = self.seen
        if seq >= len(seen):
            seen.extend(bytes(seq + 1 - len(seen)))
        if seq <= self.last:
            if seen[seq]:
                self.duplicates += 1
                return
            self.out_of_order += 1
        else:
            self.last = seq
        seen[seq] = 1
        self.distinct += 1

    @property
    def missing(self) -> int:
        """Frames the mirror sent that have not arrived (yet)."""
        return max(0, self.of.sent - self.distinct)


@dataclasses.dataclass
class Tally:
    """A run's totals over every mirror and watcher."""

    sent: int
    deliveries: int
    lost: int
    duplicates: int
    out_of_order: int
    acked: int  # sum of each mirror's last ack, capped at what it sent


def tally(sent: Iterable[Sent], received: Iterable[Received]) -> Tally:
    sent, received = list(sent), list(received)
    return Tally(
        sent=sum(s.sent for s in sent),
        deliveries=sum(r.received for r in received),
        lost=sum(r.missing for r in received),
        duplicates=sum(r.duplicates for r in received),
        out_of_order=sum(r.out_of_order for r in received),
        acked=sum(min(s.acked, s.sent) for s in sent),
    )


def complete(sent: Iterable[Sent], received: Iterable[Received]) -> bool:
    """Every frame sent so far has reached every watcher, and been acked."""
    return all(r.distinct >= r.of.sent for r in received) and all(s.acked >= s.sent for s in sent)


def most_missing(received: Iterable[Received]) -> int:
    """How many frames the slowest watcher is missing right now."""
    return max((r.of.sent - r.distinct for r in received), default=0)


def failures(r: Result) -> list[str]:
    """Why this run fails the `max` criteria (empty: it passes)."""
    out = []
    if not r.p99_ms <= P99_LIMIT_MS:
        out.append(f"p99 {r.p99_ms:.0f} ms")
    if r.lost:
        out.append(f"{r.lost} lost")
    if r.duplicates or r.out_of_order:
        out.append(f"{r.duplicates} dup / {r.out_of_order} ooo")
    if r.stores and r.stored != r.sent:
        out.append(f"stored {r.stored} of {r.sent}")
    if r.acked != r.sent:
        out.append(f"acked {r.acked} of {r.sent}")
    if r.closes:
        out.append(f"server closed {r.closes_text()}")
    if r.offered_share < GENERATOR_OK_SHARE and not r.generator_limited:
        out.append(f"mirrors held back: offered {r.offered_share:.0%} of the load")
    return out
