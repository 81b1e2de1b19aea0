"""Acceptance: `hub serve` on its embedded PostgreSQL (no DATABASE_URL) shares the server with
every other hub command on the same data directory, survives the server being killed, drains
and stops it on SIGTERM, and keeps the server's output out of the console."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.live import (
    ROOT,
    TEST_SECRET,
    HubProcess,
    create_session,
    embedded_processes,
    metrics_frame,
    open_client,
    recv,
    send,
    token,
)

sys.path.insert(0, str(ROOT / "client_examples"))
from mirror_client import MirrorClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
async def start_embedded_hub(
    tmp_path: Path, pg_data_dir: Path
) -> AsyncIterator[Callable[..., Awaitable[HubProcess]]]:
    """Start `hub serve` processes on the embedded database of one data directory (no
    DATABASE_URL); whatever a failing test leaves running is killed afterwards."""
    started: list[HubProcess] = []

    async def start(data_dir: Path = pg_data_dir, **env: str) -> HubProcess:
        log = tmp_path / f"hub{len(started)}.log"
        hub = HubProcess(None, log, migrate=True, HUB_DATA_DIR=str(data_dir), **env)
        started.append(hub)
        await hub.start(timeout=90)
        return hub

    yield start
    for hub in started:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.kill()
    for data_dir in {pg_data_dir, *(Path(h.env["HUB_DATA_DIR"]) for h in started)}:
        for proc in embedded_processes(data_dir):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


async def stored_seqs(pgdata: Path, session_id: str) -> list[int]:
    conn = await asyncpg.connect(host=str(pgdata), user="postgres", database="postgres")
    try:
        rows = await conn.fetch(
            "SELECT seq FROM frames WHERE session_id = $1::uuid ORDER BY seq", session_id
        )
    finally:
        await conn.close()
    return [r["seq"] for r in rows]


async def health_status(hub: HubProcess, probe: str = "/health") -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{hub.http}{probe}", timeout=5)).status_code


async def hub_command(
    data_dir: Path, *args: str, timeout: float = 60, **extra_env: str
) -> tuple[int, str]:
    """Run `hub …` on the data directory; (exit status, output)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(HUB_DATA_DIR=str(data_dir), HUB_AUTH_SECRET=TEST_SECRET, HUB_LOG_LEVEL="info")
    env.update(extra_env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@contextlib.asynccontextmanager
async def streaming_mirror(hub: HubProcess, session_id: str) -> AsyncIterator[MirrorClient]:
    """A resending mirror that sends a frame every 5 ms until the block ends, then waits for
    every frame to be acked."""
    client = MirrorClient(hub.http, session_id, token=token("mirror", session_id), backoff_max=0.2)
    await client.start()
    done = asyncio.Event()

    async def stream() -> None:
        i = 0
        while not done.is_set():
            await client.send_metrics({"accuracy": (i % 100) / 100})
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.005)

    sender = asyncio.create_task(stream())
    try:
        yield client
        done.set()
        await sender
        await client.wait_acked(timeout=60)
    finally:
        done.set()
        await client.close()


async def test_hub_commands_and_second_hubs_leave_the_running_hub_alone(
    start_embedded_hub: Callable[..., Awaitable[HubProcess]], pg_data_dir: Path
) -> None:
    data_dir = pg_data_dir
    pgdata = data_dir / "pgdata"
    hub = await start_embedded_hub()
    assert hub.proc is not None
    session_id = await create_session(hub.http)
    async with streaming_mirror(hub, session_id) as mirror:
        await mirror.wait_acked(50, timeout=30)

        async def still_serving() -> None:
            assert await health_status(hub) == 200
            await mirror.wait_acked(mirror.last_seq, timeout=15)  # storage still commits

        for command in (
            ("db", "current"),
            ("db", "history"),
            ("db", "upgrade"),
            ("token", "create", "--role", "therapist", "--name", "Dr Who"),
        ):
            code, out = await hub_command(data_dir, *command)
            assert code == 0, out
            await still_serving()

        # A second hub without a backplane on either port is refused, naming the running one.
        for port in (hub.port, hub.port + 1):
            code, out = await hub_command(data_dir, "serve", "--port", str(port))
            assert code == 2, out
            assert f"pid {hub.proc.pid} on port {hub.port}" in out, out
            assert "Traceback" not in out
            await still_serving()

        # Nor may a hub with a backplane join one without: the first would take the
        # second's sessions for its own, and never hear its frames.
        code, out = await hub_command(
            data_dir,
            "serve",
            "--no-migrate",
            "--port",
            str(hub.port + 1),
            timeout=90,
            HUB_BACKPLANE="postgres",
        )
        assert code == 2 and f"pid {hub.proc.pid} on port {hub.port}" in out, out
        await still_serving()

    assert await stored_seqs(pgdata, session_id) == list(range(1, mirror.last_seq + 1))
    assert mirror.last_seq > 50
    assert await hub.stop(signal.SIGTERM) == 0
    assert not [p for p in embedded_processes(data_dir) if p.name() == "postgres"], (
        "postgres left after every hub process stopped"
    )


async def test_killed_server_comes_back_under_a_running_hub(
    start_embedded_hub: Callable[..., Awaitable[HubProcess]], pg_data_dir: Path
) -> None:
    pgdata = pg_data_dir / "pgdata"
    hub = await start_embedded_hub()
    assert hub.proc is not None
    session_id = await create_session(hub.http)
    async with streaming_mirror(hub, session_id) as mirror:
        await mirror.wait_acked(100, timeout=30)
        killed = postmaster_pid(pgdata)
        os.kill(killed, signal.SIGKILL)
        killed_at = time.monotonic()
        # The hub notices and starts the server again (a new postmaster) ...
        async with asyncio.timeout(15):
            while True:
                with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                    if (
                        postmaster_pid(pgdata) != killed
                        and await health_status(hub, "/health/ready") == 200
                    ):
                        break
                await asyncio.sleep(0.05)  # remote state: polling is the only signal there is
        back_after = time.monotonic() - killed_at
        # ... and storage resumes: frames sent during the outage are stored and acked.
        sent = mirror.last_seq
        await mirror.wait_acked(sent, timeout=30)
    print(f"/health/ready 200 again {back_after:.1f} s after the kill")
    assert hub.proc.poll() is None, "the hub was not restarted"
    assert "is back" in hub.logs()
    assert await stored_seqs(pgdata, session_id) == list(range(1, mirror.last_seq + 1))
    assert await hub.stop(signal.SIGTERM) == 0
    assert not [p for p in embedded_processes(pg_data_dir) if p.name() == "postgres"]


async def test_sigterm_drains_and_stops_the_embedded_server(
    start_embedded_hub: Callable[..., Awaitable[HubProcess]], pg_data_dir: Path
) -> None:
    pgdata = pg_data_dir / "pgdata"
    frames = 400
    # Flushing only by size, and a size never reached: every frame is still buffered at SIGTERM.
    hub = await start_embedded_hub(
        HUB_FLUSH_INTERVAL_MS="600000",
        HUB_FLUSH_MAX_FRAMES="100000",
        HUB_WS_MAX_MESSAGES_PER_S="1000000",
    )
    assert hub.proc is not None
    session_id = await create_session(hub.http)
    async with (
        open_client(hub.ws, session_id, "mirror") as (mirror, _),
        open_client(hub.ws, session_id, "watch") as (watcher, _),
    ):
        assert (await recv(watcher))["type"] == "snapshot"
        for seq in range(1, frames + 1):
            await send(mirror, metrics_frame(seq))
        while (await recv(watcher)).get("seq") != frames:  # the hub has taken every frame
            pass
        hub.proc.send_signal(signal.SIGTERM)
        acked = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await recv(mirror, timeout=20)
                if message["type"] == "ack":
                    acked = message["seq"]
        assert mirror.close_code == 1012
    assert acked == frames
    assert await asyncio.to_thread(hub.proc.wait, 30) == 0
    assert not [p for p in embedded_processes(pg_data_dir) if p.name() == "postgres"], (
        "postgres left running after SIGTERM"
    )
    assert "Traceback" not in hub.logs()
    # Stored, as acked (read with a server of our own, the hub's is gone).
    from hub.storage.embedded import start_embedded

    pg = await asyncio.to_thread(start_embedded, pg_data_dir)
    try:
        assert await stored_seqs(pgdata, session_id) == list(range(1, frames + 1))
    finally:
        await asyncio.to_thread(pg.stop)


async def test_first_start_keeps_server_output_in_its_log_file(
    start_embedded_hub: Callable[..., Awaitable[HubProcess]], pg_data_dir: Path
) -> None:
    data_dir = pg_data_dir / "fresh"
    hub = await start_embedded_hub(data_dir)
    assert await hub.stop(signal.SIGINT) == 0
    console = hub.logs().splitlines()
    # One line at start; at the stop the hub says that it stops the server (once).
    stopping = [line for line in console if "stopping the embedded PostgreSQL" in line]
    assert len(stopping) == 1, "\n".join(console)
    about_postgres = [
        line
        for line in console
        if any(word in line for word in ("embedded", "initdb", "pg_ctl", "database system"))
        and line not in stopping
    ]
    log_file = data_dir / "postgresql.log"
    assert len(about_postgres) == 1, "\n".join(about_postgres)
    assert about_postgres[0].endswith(
        f"embedded PostgreSQL 18 at {data_dir / 'pgdata'}, logs in {log_file}"
    )
    server_log = log_file.read_text()
    assert "Success." in server_log  # initdb's advice
    assert "database system is ready to accept connections" in server_log
    assert "database system is shut down" in server_log
    assert not [p for p in embedded_processes(data_dir) if p.name() == "postgres"]


@pytest.mark.parametrize("command", [("db", "current"), ("serve",)], ids=["db", "serve"])
@pytest.mark.parametrize("problem", ["quote in the path", "a file in the way"])
async def test_unusable_data_dir_is_a_short_error(
    pg_data_dir: Path, command: tuple[str, ...], problem: str
) -> None:
    if problem == "quote in the path":
        data_dir = pg_data_dir / 'bad"name'
    else:
        (pg_data_dir / "file").write_text("")
        data_dir = pg_data_dir / "file" / "data"
    code, out = await hub_command(data_dir, *command)
    assert code != 0
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) <= 2 and str(data_dir) in out, out


async def test_killed_hub_leaves_no_server_behind(
    start_embedded_hub: Callable[..., Awaitable[HubProcess]], pg_data_dir: Path
) -> None:
    """The last user of the server SIGKILLed (no cleanup of its own): the keeper stops it."""
    hub = await start_embedded_hub()
    assert [p for p in embedded_processes(pg_data_dir) if p.name() == "postgres"]
    hub.kill()
    async with asyncio.timeout(20):
        while embedded_processes(pg_data_dir):  # noqa: ASYNC110 - other processes: nothing to await
            await asyncio.sleep(0.1)
    assert (
        "no process uses the embedded PostgreSQL any more"
        in (pg_data_dir / "postgresql.log").read_text()
    )
