"""The baseline for benchmarks/live_bench.py: the obvious design, honestly implemented.

Each frame a mirror sends is stored in its own transaction (one autocommit INSERT, one commit
per frame), acked once that commit returns, and then sent to every watcher with
`await ws.send_text(...)`, one after the other. No write-behind buffer, no batching, no
per-watcher queues. It speaks the subset of protocol v1 the benchmark uses (hello/welcome,
metrics and task frames with the same seq rules and the same codec as the hub, ack, error),
on the same tables (`hub.storage.models`), served by uvicorn with the hub's own flags
(uvloop, httptools, websockets-sansio, no per-message deflate).

    python benchmarks/baseline_app.py --port 8100 --database-url postgresql://…/bench_x

With `--no-store` it stores nothing: each frame is checked the same way, acked at once and
sent to every watcher. That is the bare fan-out (uvicorn + Starlette, nothing written) whose
capacity bounds what any hub on this stack can reach on a machine.

Not for production, not part of the hub: it exists to be measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from hub.frames import (
    Batch,
    Hello,
    MetricsFrame,
    ProtocolError,
    TaskFrame,
    decode_client_message,
    encode,
    error_message,
    frames_of,
)
from hub.settings import normalize_database_url
from hub.storage.models import Base

MAX_MESSAGE_BYTES = 65_536  # the hub's default, so both servers read the same messages
POOL_SIZE = 10  # asyncpg's default pool size

INSERT_FRAME = """
INSERT INTO frames (session_id, seq, kind, task_id, device_ts, received_at, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
"""


class Room:
    def __init__(self, last_seq: int) -> None:
        self.last_seq = last_seq
        self.watchers: set[WebSocket] = set()


class State:
    def __init__(self, pool: asyncpg.Pool, store: bool) -> None:
        self.pool = pool
        self.store = store  # False: the bare fan-out, no INSERT
        self.rooms: dict[uuid.UUID, Room] = {}
        self._lock = asyncio.Lock()

    async def room(self, session_id: uuid.UUID) -> Room:
        async with self._lock:
            room = self.rooms.get(session_id)
            if room is None:
                last = await self.pool.fetchval(
                    "SELECT coalesce(max(seq), 0) FROM frames WHERE session_id = $1", session_id
                )
                room = self.rooms[session_id] = Room(int(last))
            return room


async def _hello(websocket: WebSocket) -> uuid.UUID | None:
    await websocket.accept()
    try:
        session_id = uuid.UUID(websocket.path_params["session_id"])
        hello = decode_client_message(await websocket.receive_text())
    except (ValueError, ProtocolError):
        await websocket.close(1002)
        return None
    if not isinstance(hello, Hello):
        await websocket.close(1002)
        return None
    return session_id


def _welcome(session_id: uuid.UUID, role: str, last_seq: int) -> str:
    return orjson.dumps(
        {
            "type": "welcome",
            "session_id": str(session_id),
            "role": role,
            "last_seq": last_seq,
            "acked_seq": last_seq,
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "protocol": 1,
            "max_batch": 500,
        }
    ).decode()


async def mirror(websocket: WebSocket) -> None:
    state: State = websocket.app.state.baseline
    session_id = await _hello(websocket)
    if session_id is None:
        return
    room = await state.room(session_id)
    await websocket.send_text(_welcome(session_id, "mirror", room.last_seq))
    try:
        while True:
            text = await websocket.receive_text()
            try:
                message = decode_client_message(text)
                if not isinstance(message, MetricsFrame | TaskFrame | Batch):
                    raise ProtocolError("unsupported", "the baseline takes frames only")
                frames = frames_of(message)
            except ProtocolError as exc:
                await websocket.send_text(error_message(exc).decode())
                continue
            for frame in frames:
                expected = room.last_seq + 1
                if frame.seq != expected:
                    code = "duplicate_seq" if frame.seq < expected else "seq_gap"
                    exc = ProtocolError(code, f"expected {expected}", frame.seq, expected)
                    await websocket.send_text(error_message(exc).decode())
                    break
                out = encode(frame).decode()
                if state.store:
                    # One frame, one transaction: the INSERT commits before anything else.
                    async with state.pool.acquire() as conn:
                        await conn.execute(
                            INSERT_FRAME,
                            session_id,
                            frame.seq,
                            "task" if isinstance(frame, TaskFrame) else "metrics",
                            frame.task_id,
                            frame.ts,
                            datetime.now(UTC),
                            out,
                        )
                room.last_seq = frame.seq
                await websocket.send_text(f'{{"type":"ack","seq":{frame.seq}}}')
                for watcher in list(room.watchers):
                    try:
                        await watcher.send_text(out)
                    except (RuntimeError, OSError, WebSocketDisconnect):
                        room.watchers.discard(watcher)
    except WebSocketDisconnect:
        pass


async def watch(websocket: WebSocket) -> None:
    state: State = websocket.app.state.baseline
    session_id = await _hello(websocket)
    if session_id is None:
        return
    room = await state.room(session_id)
    await websocket.send_text(_welcome(session_id, "watcher", room.last_seq))
    room.watchers.add(websocket)
    try:
        while True:
            await websocket.receive_text()  # watchers only listen
    except WebSocketDisconnect:
        pass
    finally:
        room.watchers.discard(websocket)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(database_url: str, store: bool = True) -> Starlette:
    sqlalchemy_url = normalize_database_url(database_url)
    dsn = sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = create_async_engine(sqlalchemy_url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await engine.dispose()
        pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
        app.state.baseline = State(pool, store)
        try:
            yield
        finally:
            await pool.close()

    return Starlette(
        routes=[
            Route("/health", health),
            WebSocketRoute("/ws/sessions/{session_id}/mirror", mirror),
            WebSocketRoute("/ws/sessions/{session_id}/watch", watch),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--database-url", required=True)
    parser.add_argument(
        "--no-store", action="store_true", help="store nothing: ack at once, then fan out"
    )
    args = parser.parse_args()
    # The same server stack and flags as `hub serve` (hub/cli_serve.py).
    uvicorn.run(
        create_app(args.database_url, store=not args.no_store),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=MAX_MESSAGE_BYTES,
        lifespan="on",
        log_level="warning",
    )


if __name__ == "__main__":
    main()
