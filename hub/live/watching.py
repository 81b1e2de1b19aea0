"""A watcher's join, without a socket: what it is sent before the live tail (invariant 3).

`plan_catch_up` runs right after the watcher joined the room, with no await in between: every
frame the room publishes from then on goes to the watcher's send queue, and the plan covers
exactly the frames before, so nothing falls between the two and nothing comes twice.
"""

from __future__ import annotations

import dataclasses

from hub.live.session import LiveSession


@dataclasses.dataclass(frozen=True, slots=True)
class CatchUp:
    last_seq: int  # what the room had published at the join
    stored: tuple[int, int] | None  # frames after < seq <= upto to read from storage first
    memory: list[str]  # then these texts: the snapshot, or the logged frames after `since`
    ended: bool  # the session had ended at the join: `ended` follows, then the close


def plan_catch_up(live: LiveSession, since: int | None) -> CatchUp:
    """A new watcher gets a snapshot; one resuming with `since` gets every frame after it."""
    last_seq = live.room.published_seq  # what this node's room has published, from any node
    # Ended before the join: nothing more will come, so `ended` follows the catch-up. (Ending
    # after the join, or ended while this node's room still fills a gap, reaches the watcher
    # through its send queue, like any other message.)
    ended = live.told_ended
    if since is None:
        return CatchUp(last_seq, None, [live.snapshot(last_seq, ended)], ended)
    memory = live.room.logged_after(since)
    oldest = live.room.oldest_logged()
    if since >= last_seq or (oldest is not None and oldest <= since + 1):
        return CatchUp(last_seq, None, memory, ended)
    # Everything older than the in-memory log is stored (the log is trimmed only below the
    # stored seq), so PostgreSQL has every frame in (since, oldest - 1].
    upto = last_seq if oldest is None else oldest - 1
    return CatchUp(last_seq, (since, upto), memory, ended)
