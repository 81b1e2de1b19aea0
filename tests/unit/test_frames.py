"""The wire codec and the close codes, without sockets."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import orjson
import pytest

from hub import closecodes
from hub.frames import (
    MAX_BATCH,
    Ack,
    Batch,
    End,
    Error,
    Hello,
    MetricsFrame,
    ProtocolError,
    TaskFrame,
    decode_client_message,
    encode,
    error_message,
    frames_of,
)

TASK_ID = "6f1c1f8e-1d3a-4c55-9a53-0c0b0d0e0f10"


def metrics(seq: Any = 1, **extra: Any) -> dict[str, Any]:
    return {
        "type": "metrics",
        "seq": seq,
        "ts": 1_700_000_000.5,
        "values": {"accuracy": 0.9},
        **extra,
    }


def task(seq: Any = 2, **extra: Any) -> dict[str, Any]:
    frame = {
        "type": "task",
        "seq": seq,
        "ts": 1_700_000_001.0,
        "task_id": TASK_ID,
        "task_name": "raise_hand",
        "event": "finished",
        "status": "success",
        "duration_seconds": 4.5,
        "metrics": {"max_angle": 170.0},
    }
    return {**frame, **extra}


def dumps(message: Any) -> bytes:
    return msgspec.json.encode(message)  # unlike orjson, writes integers past 64 bits


def decode_error(data: bytes | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_client_message(data)
    return info.value


# Valid messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "str"])
def test_decode_valid_messages(as_text: bool) -> None:
    def wire(message: dict[str, Any]) -> bytes | str:
        data = dumps(message)
        return data.decode() if as_text else data

    assert decode_client_message(wire({"type": "hello"})) == Hello()
    assert decode_client_message(wire({"type": "hello", "token": "t", "since": 0})) == Hello(
        token="t", since=0
    )
    m = decode_client_message(wire(metrics(7, task_id=TASK_ID)))
    assert m == MetricsFrame(
        seq=7, ts=1_700_000_000.5, values={"accuracy": 0.9}, task_id=uuid.UUID(TASK_ID)
    )
    t = decode_client_message(wire(task(8)))
    assert isinstance(t, TaskFrame)
    assert (t.seq, t.task_id, t.event, t.status) == (8, uuid.UUID(TASK_ID), "finished", "success")
    assert (t.duration_seconds, t.metrics) == (4.5, {"max_angle": 170.0})
    b = decode_client_message(wire({"type": "batch", "frames": [metrics(1), task(2)]}))
    assert isinstance(b, Batch)
    assert [type(f) for f in frames_of(b)] == [MetricsFrame, TaskFrame]
    assert [f.seq for f in frames_of(b)] == [1, 2]
    assert frames_of(m) == [m]  # type: ignore[arg-type]
    assert decode_client_message(wire({"type": "end", "last_seq": 0})) == End(last_seq=0)


def test_limits_are_inclusive() -> None:
    top = decode_client_message(dumps(metrics(2**62, values={"a" * 100: 1e12, "b": -1e12})))
    assert isinstance(top, MetricsFrame) and top.seq == 2**62
    full = decode_client_message(dumps({"type": "batch", "frames": [metrics(1)] * MAX_BATCH}))
    assert isinstance(full, Batch) and len(full.frames) == MAX_BATCH
    names = {f"m{i}": float(i) for i in range(200)}
    assert isinstance(decode_client_message(dumps(metrics(1, values=names))), MetricsFrame)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "hello", "token": "x", "since": 3, "protocol": 1},
        metrics(5),
        metrics(6, task_id=TASK_ID),
        task(9),
        task(10, event="started", status="in_progress", duration_seconds=None, metrics={}),
        {"type": "batch", "frames": [metrics(1), task(2)]},
        {"type": "end", "last_seq": 12},
    ],
    ids=["hello", "metrics", "metrics_task", "task", "task_minimal", "batch", "end"],
)
def test_encode_round_trips(message: dict[str, Any]) -> None:
    decoded = decode_client_message(dumps(message))
    encoded = encode(decoded)
    assert decode_client_message(encoded) == decoded
    assert orjson.loads(encoded)["type"] == message["type"]


def test_frames_are_encoded_compactly() -> None:
    # Defaults are omitted (omit_defaults) so what watchers get and what is stored is small.
    text = orjson.loads(encode(decode_client_message(dumps(metrics(3)))))
    assert text == {"type": "metrics", "seq": 3, "ts": 1_700_000_000.5, "values": {"accuracy": 0.9}}


def test_hub_messages_encode() -> None:
    assert orjson.loads(encode(Ack(seq=9))) == {"type": "ack", "seq": 9}
    gap = orjson.loads(error_message(ProtocolError("seq_gap", "skips", 7, 5)))
    assert gap == {
        "type": "error",
        "code": "seq_gap",
        "message": "skips",
        "seq": 7,
        "expected_seq": 5,
    }
    # What is not known is left out rather than sent as null.
    assert orjson.loads(error_message(ProtocolError("x", "y"))) == {
        "type": "error",
        "code": "x",
        "message": "y",
    }


# Invalid messages -------------------------------------------------------------------------

BAD_MESSAGES: list[Any] = [
    # (raw message, expected code, expected seq)
    pytest.param(b"{not json", "malformed_json", None, id="malformed"),
    pytest.param(b"", "malformed_json", None, id="empty"),
    pytest.param(b'{"type":"hello"} trailing', "malformed_json", None, id="trailing"),
    pytest.param(b'{"type":"metrics","seq":1,"ts":NaN}', "malformed_json", None, id="nan_literal"),
    pytest.param(b"\xff\xfe", "malformed_json", None, id="not_utf8"),
    pytest.param(b"[1, 2]", "invalid_message", None, id="array"),
    pytest.param(b'"hello"', "invalid_message", None, id="string"),
    pytest.param(b"null", "invalid_message", None, id="null"),
    pytest.param(dumps({"type": "selfie", "seq": 4}), "unknown_type", None, id="unknown_type"),
    pytest.param(dumps({"seq": 4}), "unknown_type", None, id="no_type"),
    pytest.param(dumps({"type": 3}), "unknown_type", None, id="type_not_string"),
    pytest.param(dumps({"type": "ack", "seq": 4}), "unknown_type", None, id="hub_type"),
    pytest.param(dumps(metrics(0)), "invalid_frame", 0, id="seq_zero"),
    pytest.param(dumps(metrics(-3)), "invalid_frame", -3, id="seq_negative"),
    pytest.param(dumps(metrics(2**62 + 1)), "invalid_frame", 2**62 + 1, id="seq_too_big"),
    pytest.param(dumps(metrics(10**25)), "invalid_frame", 10**25, id="seq_bignum"),
    pytest.param(dumps(metrics("5")), "invalid_frame", None, id="seq_string"),
    pytest.param(dumps(metrics(1.5)), "invalid_frame", None, id="seq_float"),
    pytest.param(dumps(metrics(None)), "invalid_frame", None, id="seq_null"),
    pytest.param(dumps(metrics(3, ts="now")), "invalid_frame", 3, id="ts_string"),
    pytest.param(dumps(metrics(3, ts=-1)), "invalid_frame", 3, id="ts_negative"),
    pytest.param(dumps(metrics(3, values={"a": "x"})), "invalid_frame", 3, id="value_string"),
    pytest.param(dumps(metrics(3, values={"a": None})), "invalid_frame", 3, id="value_null"),
    pytest.param(dumps(metrics(3, values={"a": [1]})), "invalid_frame", 3, id="value_list"),
    pytest.param(dumps(metrics(3, values={"a": 1e13})), "invalid_frame", 3, id="value_huge"),
    pytest.param(dumps(metrics(3, values=[1, 2])), "invalid_frame", 3, id="values_list"),
    pytest.param(dumps(metrics(3, values={"1a": 1})), "invalid_frame", 3, id="name_digit"),
    pytest.param(dumps(metrics(3, values={"a b": 1})), "invalid_frame", 3, id="name_space"),
    pytest.param(dumps(metrics(3, values={"": 1})), "invalid_frame", 3, id="name_empty"),
    pytest.param(dumps(metrics(3, values={"a" * 101: 1})), "invalid_frame", 3, id="name_long"),
    pytest.param(
        dumps(metrics(3, values={f"m{i}": 1 for i in range(201)})),
        "invalid_frame",
        3,
        id="too_many_metrics",
    ),
    pytest.param(dumps(metrics(3, task_id="nope")), "invalid_frame", 3, id="task_id_not_uuid"),
    pytest.param(dumps(metrics(3, extra=1)), "invalid_frame", 3, id="unknown_field"),
    pytest.param(dumps(task(4, event="paused")), "invalid_frame", 4, id="task_event"),
    pytest.param(dumps(task(4, status="done")), "invalid_frame", 4, id="task_status"),
    pytest.param(dumps(task(4, task_name="")), "invalid_frame", 4, id="task_name_empty"),
    pytest.param(dumps(task(4, duration_seconds=-1)), "invalid_frame", 4, id="duration_neg"),
    pytest.param(dumps(task(4, colour="red")), "invalid_frame", 4, id="task_unknown_field"),
    pytest.param(dumps({"type": "hello", "since": -1}), "invalid_frame", None, id="since_neg"),
    pytest.param(dumps({"type": "hello", "user": "x"}), "invalid_frame", None, id="hello_field"),
    pytest.param(dumps({"type": "end"}), "invalid_frame", None, id="end_missing"),
    pytest.param(dumps({"type": "end", "last_seq": -1}), "invalid_frame", None, id="end_neg"),
    pytest.param(dumps({"type": "batch", "frames": []}), "invalid_frame", None, id="batch_empty"),
    pytest.param(dumps({"type": "batch", "frames": [1]}), "invalid_frame", None, id="batch_int"),
    pytest.param(
        dumps({"type": "batch", "frames": [metrics(5)] * (MAX_BATCH + 1)}),
        "invalid_frame",
        5,
        id="batch_over_max",
    ),
    pytest.param(
        dumps({"type": "batch", "frames": [{"type": "hello"}]}),
        "invalid_frame",
        None,
        id="batch_of_hello",
    ),
    pytest.param(
        dumps({"type": "batch", "frames": [{"type": "batch", "frames": [metrics(1)]}]}),
        "invalid_frame",
        None,
        id="batch_nested",
    ),
    pytest.param(
        # The whole batch is rejected; the error names the offending frame.
        dumps({"type": "batch", "frames": [metrics(6), metrics(7, values={"a": "x"})]}),
        "invalid_frame",
        7,
        id="batch_second_bad",
    ),
    pytest.param(
        dumps({"type": "batch", "frames": [metrics(s) for s in range(6, 16)] + [metrics("x")]}),
        "invalid_frame",
        None,
        id="batch_eleventh_seq_bad",
    ),
    pytest.param(
        dumps(
            {"type": "batch", "frames": [*(metrics(s) for s in range(6, 16)), task(16, event="x")]}
        ),
        "invalid_frame",
        16,
        id="batch_eleventh_bad",
    ),
    pytest.param(
        dumps({"type": "batch", "frames": [metrics(6)], "extra": True}),
        "invalid_frame",
        6,
        id="batch_unknown_field",
    ),
]


@pytest.mark.parametrize(("data", "code", "seq"), BAD_MESSAGES)
def test_bad_input_gives_protocol_error(data: bytes, code: str, seq: int | None) -> None:
    error = decode_error(data)
    assert (error.code, error.seq) == (code, seq), error.message
    assert error.message and str(error) == error.message
    # The error frame the hub sends for it is itself well-formed.
    assert msgspec.json.decode(error_message(error), type=Error) == Error(code, error.message, seq)


def test_error_message_names_the_field() -> None:
    assert "$.values" in decode_error(dumps(metrics(3, values={"a": "x"}))).message
    assert (
        "$.frames[1]"
        in decode_error(dumps({"type": "batch", "frames": [metrics(6), metrics(None)]})).message
    )
    assert "selfie" in decode_error(dumps({"type": "selfie"})).message


OUT_OF_RANGE = "1" + "0" * 400  # 1e400 written out: an integer JSON cannot hold as a float
NESTED = "[" * 5_000 + "]" * 5_000  # 10 kB, well under the 64 KiB message limit


@pytest.mark.parametrize(
    "data",
    [
        pytest.param('{"type":"metrics","seq":1,"ts":1,"values":{"a":1e400}}', id="value_1e400"),
        pytest.param('{"type":"metrics","seq":1,"ts":-1e400,"values":{"a":1}}', id="ts_-1e400"),
        pytest.param('{"type":"metrics","seq":1e400,"ts":1,"values":{"a":1}}', id="seq_1e400"),
        pytest.param(
            f'{{"type":"metrics","seq":1,"ts":{OUT_OF_RANGE}.0,"values":{{}}}}', id="ts_long"
        ),
        pytest.param('{"type":"selfie","x":1e400}', id="unknown_type_1e400"),
        pytest.param(NESTED, id="deep_array"),
        pytest.param(f'{{"type":"selfie","x":{NESTED}}}', id="deep_value"),
    ],
)
def test_unrepresentable_input_gives_protocol_error(data: str) -> None:
    # Valid JSON that no float can hold, or nested past the decoder's depth limit.
    error = decode_error(data)
    assert (error.code, error.seq) == ("invalid_message", None), error.message


def test_boolean_seq_is_not_reported_as_a_seq() -> None:
    error = decode_error(dumps(metrics(True)))
    assert error.code == "invalid_frame"
    assert error.seq is None  # not `true`, which isinstance(True, int) would let through


# Close codes ------------------------------------------------------------------------------


def test_close_codes_are_unique_and_complete() -> None:
    codes = [c.code for c in closecodes.ALL]
    names = [c.name for c in closecodes.ALL]
    assert len(set(codes)) == len(codes)
    assert len(set(names)) == len(names)
    defined = {v for v in vars(closecodes).values() if isinstance(v, closecodes.CloseCode)}
    assert defined == set(closecodes.ALL)
    assert closecodes.BY_CODE == {c.code: c for c in closecodes.ALL}
    for c in closecodes.ALL:
        # RFC 6455 codes the hub may send, or the private-use range.
        assert c.code in (1000, 1002, 1003, 1007, 1008, 1009, 1011, 1012) or 4000 <= c.code <= 4999
        assert c.meaning


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        (1000, False),
        (1002, False),
        (1003, False),
        (1007, False),  # the same bytes would be invalid again
        (1008, False),
        (1009, False),  # the same message would be too big again
        (1011, True),
        (1012, True),
        (4000, True),
        (4001, False),
        (4004, False),
        (4005, False),
        (4008, True),
        (4009, True),  # this hub process lost the stream: resume, perhaps elsewhere
        (4029, False),
        (1006, True),  # unknown to the hub: a dropped network
        (1001, True),
        (4999, True),
    ],
)
def test_should_reconnect(code: int, reconnect: bool) -> None:
    assert closecodes.should_reconnect(code) is reconnect
    if code in closecodes.BY_CODE:
        assert closecodes.BY_CODE[code].reconnect is reconnect
