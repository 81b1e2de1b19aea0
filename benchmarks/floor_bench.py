"""The floor under any Python fan-out on this machine: what the system calls and the event
loop alone cost per delivery, with nothing else done.

A server process (uvloop, pinned to core 0) takes S "mirror" TCP connections and W "watcher"
connections per mirror from a generator process (pinned to core 1). Each mirror sends a
300-byte message R times a second on an absolute schedule; the server writes each one to its
W watchers as it arrives, and every 50 ms writes one 32-byte ack to each mirror that sent
something (the hub's default flush interval). No WebSocket framing, no JSON, no validation,
no storage: the per-message work is a read, W writes and the loop's wake-ups. The figure is
the server's CPU (user + system, from /proc) per delivery over the run; compare it with
`live_bench.py`'s "server CPU per 1,000 deliveries" for the hub and the `fanout` target at
the same S, R and W.

    .venv/bin/python benchmarks/floor_bench.py                  # S=50, R=30, W=2, 20 s
    .venv/bin/python benchmarks/floor_bench.py --sessions 300 --seconds 10

Not part of the hub: it exists to be measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from multiprocessing.connection import Connection

import uvloop

MESSAGE = b"m" * 299 + b"\n"  # about a metrics frame's size
ACK = b"a" * 31 + b"\n"
ACK_INTERVAL_S = 0.05


def serve(ports_out: Connection, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        watchers: dict[int, list[asyncio.Transport]] = {}
        mirrors: list[Mirror] = []

        class Watcher(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:  # its one line: the mirror's index
                watchers.setdefault(int(data), []).append(self.transport)  # type: ignore[arg-type]

        class Mirror(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.Transport = transport  # type: ignore[assignment]
                self.targets: list[asyncio.Transport] | None = None
                self.unread = self.unacked = 0

            def data_received(self, data: bytes) -> None:
                if self.targets is None:  # the first line: its index
                    line, _, data = data.partition(b"\n")
                    self.targets = watchers.get(int(line), [])
                    mirrors.append(self)
                self.unread += len(data)
                count, self.unread = divmod(self.unread, len(MESSAGE))
                for _ in range(count):
                    for transport in self.targets:
                        transport.write(MESSAGE)
                self.unacked += count

        loop = asyncio.get_running_loop()
        mirror_server = await loop.create_server(Mirror, "127.0.0.1", 0)
        watcher_server = await loop.create_server(Watcher, "127.0.0.1", 0)
        ports_out.send(
            (mirror_server.sockets[0].getsockname()[1], watcher_server.sockets[0].getsockname()[1])
        )
        while True:
            await asyncio.sleep(ACK_INTERVAL_S)
            for mirror in mirrors:
                if mirror.unacked:
                    mirror.transport.write(ACK)
                    mirror.unacked = 0

    uvloop.run(main())


def generate(args: argparse.Namespace, ports: tuple[int, int]) -> tuple[int, int]:
    os.sched_setaffinity(0, {args.client_cpu})
    mirror_port, watcher_port = ports

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        received = [0]

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                received[0] += data.count(b"\n")

        for index in range(args.sessions):
            for _ in range(args.watchers):
                transport, _ = await loop.create_connection(Reader, "127.0.0.1", watcher_port)
                transport.write(b"%d" % index)
        await asyncio.sleep(0.5)  # every watcher registered before its mirror connects
        senders = []
        for index in range(args.sessions):
            transport, _ = await loop.create_connection(Reader, "127.0.0.1", mirror_port)
            transport.write(b"%d\n" % index)
            senders.append(transport)
        await asyncio.sleep(0.5)
        start = time.perf_counter()
        sent = [0]

        async def send(index: int, transport: asyncio.Transport) -> None:
            first = start + index / args.sessions / args.rate
            for k in range(round(args.seconds * args.rate)):
                delay = first + k / args.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                transport.write(MESSAGE)
                sent[0] += 1

        await asyncio.gather(*(send(i, t) for i, t in enumerate(senders)))
        await asyncio.sleep(1.0)  # the last deliveries and acks
        return sent[0], received[0]

    return uvloop.run(main())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--watchers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    args = parser.parse_args()
    ports_in, ports_out = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(ports_out, args.server_cpu), daemon=True)
    server.start()
    try:
        ports = ports_in.recv()
        before = cpu_seconds(server.pid)  # type: ignore[arg-type]
        sent, received = generate(args, ports)
        used = cpu_seconds(server.pid) - before  # type: ignore[arg-type]
    finally:
        server.kill()
    deliveries = sent * args.watchers
    print(
        f"S={args.sessions} R={args.rate:g} W={args.watchers} T={args.seconds:g} s: sent {sent},"
        f" deliveries {deliveries}, lines received {received} (deliveries and acks);"
        f" server CPU {used:.2f} s = {used / deliveries * 1e6:.1f} µs per delivery"
        f" ({used / deliveries * 1000:.3f} s per 1,000)"
    )


if __name__ == "__main__":
    main()
