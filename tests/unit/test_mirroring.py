"""The mirror's rules after its hello, driven by text messages, without a socket."""

from __future__ import annotations

import json

import pytest

from hub import closecodes
from hub.frames import Batch, End, Hello, MetricsFrame, ProtocolError, encode
from hub.live.mirroring import MAX_ERRORS_IN_A_ROW, MirrorRules


def metrics(seq: int) -> MetricsFrame:
    return MetricsFrame(seq=seq, ts=1.0, values={"accuracy": 0.5})


def test_a_frame_and_a_batch_read_as_frames_in_order() -> None:
    rules = MirrorRules()
    assert [f.seq for f in rules.read(encode(metrics(1)).decode())] == [1]  # type: ignore[union-attr]
    batch = Batch(frames=[metrics(2), metrics(3)])
    assert [f.seq for f in rules.read(encode(batch).decode())] == [2, 3]  # type: ignore[union-attr]


def test_end_reads_as_end() -> None:
    assert MirrorRules().read(encode(End(last_seq=4)).decode()) == End(last_seq=4)


def test_a_second_hello_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError) as exc:
        MirrorRules().read(encode(Hello()).decode())
    assert exc.value.code == "unexpected_hello"


def test_garbage_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        MirrorRules().read("{not json")


def test_twenty_bad_messages_in_a_row_close_the_connection() -> None:
    rules = MirrorRules()
    bad = ProtocolError("seq_gap", "skips ahead", 9, 2)
    for _ in range(MAX_ERRORS_IN_A_ROW - 1):
        refusal = rules.refused(bad)
        assert refusal.close is None
        assert json.loads(refusal.error)["code"] == "seq_gap"
    assert rules.refused(bad).close is closecodes.TOO_MANY_ERRORS


def test_a_good_message_resets_the_count() -> None:
    rules = MirrorRules()
    bad = ProtocolError("seq_gap", "skips ahead", 9, 2)
    for _ in range(MAX_ERRORS_IN_A_ROW - 1):
        rules.refused(bad)
    rules.taken()
    for _ in range(MAX_ERRORS_IN_A_ROW - 1):
        assert rules.refused(bad).close is None
