"""The session's lifecycle as a state machine, without sockets or storage: every state x event,
the legal moves to the state `TRANSITIONS` names and the illegal ones raising
`InvalidTransition` with nothing changed; and the facts callers ask, derived from the state."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from hub import closecodes
from hub.frames import MetricsFrame, encode
from hub.live.rooms import Room
from hub.live.sendqueue import Watcher
from hub.live.session import (
    TRANSITIONS,
    InvalidTransition,
    LiveSession,
    MirrorLink,
    SessionEvent,
    SessionState,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)
LAST = 3  # every session here has frames 1..3; the room publishes them as a test says


def text(seq: int) -> str:
    return encode(MetricsFrame(seq=seq, ts=1.0, values={"accuracy": seq / 100})).decode()


def session_in(state: SessionState) -> tuple[LiveSession, Watcher]:
    """A session brought into `state` through its own methods only, with one watcher."""
    room = Room({"id": "s", "ended_at": None}, [], replay_frames=10, seq=0, max_pending=10)
    live = LiveSession(uuid.uuid4(), 0, False, room)
    watcher = Watcher(bound=100, since=None)
    room.add_watcher(watcher)
    for seq in range(1, LAST + 1):
        live.check_seq(seq)
        live.accepted(seq)
    if state is SessionState.LIVE:
        pass
    elif state is SessionState.ENDING:
        assert not live.end_after_seq(LAST, AT)  # the room has published nothing yet
    elif state is SessionState.ENDED:
        for seq in range(1, LAST + 1):
            room.offer(seq, text(seq))
        assert live.end_after_seq(LAST, AT)
        assert live.end_due() == (LAST, AT)
    elif state is SessionState.DROPPED:
        live.drop()
    elif state is SessionState.ERASED:
        live.erase()
    assert live.state is state
    return live, watcher


def publish_all(live: LiveSession) -> None:
    for seq in range(1, LAST + 1):
        live.room.offer(seq, text(seq))


# What each event is, as a call on the session (the room has published every frame up to the
# end, so FINISH is due where it is legal at all).
def end(live: LiveSession) -> None:
    live.end_after_seq(LAST, AT)


def finish(live: LiveSession) -> None:
    publish_all(live)
    if live.end_due() is None:
        # `end_due` is a poll: where no end is pending it says so and changes nothing. Seen
        # from the table, that is FINISH refused.
        raise InvalidTransition(live.state, SessionEvent.FINISH)


def attach(live: LiveSession) -> None:
    live.attach_mirror(MirrorLink(bound=8), since=1.0)


EVENTS: dict[SessionEvent, Callable[[LiveSession], None]] = {
    SessionEvent.END: end,
    SessionEvent.FINISH: finish,
    SessionEvent.DROP: lambda live: live.drop(),
    SessionEvent.ERASE: lambda live: live.erase(),
    SessionEvent.ATTACH: attach,
}


def test_every_event_has_a_call() -> None:
    assert set(EVENTS) == set(SessionEvent)


@pytest.mark.parametrize("state", list(SessionState), ids=lambda s: s.value)
@pytest.mark.parametrize("event", list(SessionEvent), ids=lambda e: e.value)
def test_every_state_and_event(state: SessionState, event: SessionEvent) -> None:
    live, _ = session_in(state)
    target = TRANSITIONS.get((state, event))
    if target is None:
        with pytest.raises(InvalidTransition) as refused:
            EVENTS[event](live)
        assert (refused.value.state, refused.value.event) == (state, event)
        assert live.state is state  # an illegal move changes nothing
        assert not live.mirror_connected or event is not SessionEvent.ATTACH
    else:
        EVENTS[event](live)
        assert live.state is target


def test_the_table_names_only_what_the_code_does() -> None:
    # Final states have no way out; LIVE is the only state a mirror may attach in.
    for (state, event), target in TRANSITIONS.items():
        assert state not in (SessionState.DROPPED, SessionState.ERASED)
        if event is SessionEvent.ATTACH:
            assert state is target is SessionState.LIVE
    assert {s for (s, e) in TRANSITIONS if e is SessionEvent.FINISH} == {SessionState.ENDING}


def test_a_session_loaded_as_ended_starts_ended() -> None:
    room = Room({"id": "s", "ended_at": AT}, [], replay_frames=10, seq=5, max_pending=10)
    live = LiveSession(uuid.uuid4(), 5, True, room)
    assert live.state is SessionState.ENDED and live.told_ended and live.ended
    assert not live.writable and live.joinable


# The derived facts ---------------------------------------------------------------------


FACTS = {
    # state: (writable, joinable, ended, ending, told_ended, dropped, erased, gone)
    SessionState.LIVE: (True, True, False, False, False, False, False, False),
    SessionState.ENDING: (False, True, True, True, False, False, False, False),
    SessionState.ENDED: (False, True, True, False, True, False, False, False),
    SessionState.DROPPED: (False, False, False, False, False, True, False, True),
    SessionState.ERASED: (False, False, False, False, False, False, True, True),
}


@pytest.mark.parametrize("state", list(SessionState), ids=lambda s: s.value)
def test_facts_follow_the_state(state: SessionState) -> None:
    live, _ = session_in(state)
    facts = (
        live.writable,
        live.joinable,
        live.ended,
        live.ending,
        live.told_ended,
        live.dropped,
        live.erased,
        live.gone,
    )
    assert facts == FACTS[state]


def test_frames_are_taken_only_from_the_attached_mirror_of_a_live_session() -> None:
    live, _ = session_in(SessionState.LIVE)
    old, new = MirrorLink(bound=8), MirrorLink(bound=8)
    assert not live.takes_frames_from(old)
    live.attach_mirror(old, since=1.0)
    assert live.takes_frames_from(old) and live.mirror_connected
    live.attach_mirror(new, since=2.0)
    assert not live.takes_frames_from(old) and live.takes_frames_from(new)
    end(live)  # ended: even its own mirror writes no more
    assert not live.takes_frames_from(new)
    assert live.mirror_connected  # until its connection lets go
    assert live.detach_mirror(new) and not live.mirror_connected


def test_an_erased_session_takes_nothing_from_its_mirror() -> None:
    live, watcher = session_in(SessionState.LIVE)
    link = MirrorLink(bound=8)
    live.attach_mirror(link, since=1.0)
    live.erase()
    assert not live.takes_frames_from(link)
    assert link.outbox.close_code is closecodes.UNKNOWN_SESSION
    assert watcher.outbox.close_code is closecodes.UNKNOWN_SESSION


def test_the_newest_word_of_an_end_counts_until_it_is_due() -> None:
    live, _ = session_in(SessionState.ENDING)
    later = datetime(2026, 1, 2, tzinfo=UTC)
    assert not live.end_after_seq(LAST, later)
    assert live.pending_end == (LAST, later)
    live.room.offer(1, text(1))
    assert live.end_due() is None and live.state is SessionState.ENDING
    publish_all(live)
    assert live.end_due() == (LAST, later) and live.state is SessionState.ENDED
    assert live.pending_end is None


def test_an_end_told_already_changes_nothing() -> None:
    live, _ = session_in(SessionState.ENDED)
    assert not live.end_after_seq(LAST, datetime(2026, 1, 2, tzinfo=UTC))
    assert live.pending_end is None and live.end_due() is None
    assert live.state is SessionState.ENDED


def test_a_dropped_ending_session_keeps_its_pending_end_for_the_record() -> None:
    live, _ = session_in(SessionState.ENDING)
    live.drop()
    assert live.state is SessionState.DROPPED and live.pending_end == (LAST, AT)
    publish_all(live)
    assert live.end_due() is None  # nobody is told from a dropped object


def test_idle_needs_no_pins_and_everything_stored() -> None:
    live, _ = session_in(SessionState.LIVE)
    assert not live.idle  # 1..3 accepted, nothing stored
    live.on_stored(LAST)
    assert live.idle
    live.pin()
    assert not live.idle
    live.unpin()
    assert live.idle
