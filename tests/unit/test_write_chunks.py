"""Queued messages go to the socket several to a write, up to WRITE_BYTES (so the socket's
buffer stays bounded as with one message per write), in order, never split."""

from __future__ import annotations

from hub.endpoints.connection import WRITE_BYTES, one_write
from hub.live.sendqueue import SendQueue


def queue_of(texts: list[str]) -> SendQueue:
    queue = SendQueue(bound=10_000, max_bytes=1 << 30)
    for text in texts:
        assert queue.push(text)
    return queue


def test_a_write_takes_messages_in_order_up_to_its_size() -> None:
    texts = [f'{{"n":{i:04d},"pad":"{"x" * 990}"}}' for i in range(200)]
    queue = queue_of(texts)
    writes = []
    while queue.items:
        writes.append(one_write(queue.pop, queue.items.__len__))
    assert [m.decode() for w in writes for m in w] == texts  # all, in order, whole
    size = len(texts[0])
    full = -(-WRITE_BYTES // size)  # the message that reaches WRITE_BYTES ends a write
    assert [len(w) for w in writes[:-1]] == [full] * (len(writes) - 1)
    assert 0 < len(writes[-1]) <= full


def test_a_message_larger_than_a_write_goes_alone() -> None:
    big = '{"pad":"' + "x" * (2 * WRITE_BYTES) + '"}'
    queue = queue_of([big, '{"n":1}'])
    assert one_write(queue.pop, queue.items.__len__) == [big.encode()]
    assert one_write(queue.pop, queue.items.__len__) == [b'{"n":1}']
