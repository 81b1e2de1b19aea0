"""What a person running `hub` sees: one log format (or JSON lines), the first admin token
last and framed, short actionable errors instead of tracebacks, and the CLI's own polish.
Real `hub` processes against real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy.engine import make_url

from hub.cli import explain
from hub.logs import JsonFormatter, TextFormatter
from hub.settings import Settings
from tests.support import ROOT
from tests.support.database import admin_sql, embedded_data_dir
from tests.support.live import TEST_SECRET, free_port, open_client

# `2026-11-30T18:20:01.123Z INFO    hub.mirror: mirror connected …`
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: "
)
RULE = "=" * 78
# Lines the first start may print before the admin token, so the token is not buried.
MAX_LINES_BEFORE_TOKEN = 15


def hub_env(data_dir: Path, database_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a hub as its operator would start it: no test settings inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_") and k != "DATABASE_URL"}
    env["HUB_DATA_DIR"] = str(data_dir)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return {**env, **extra}


class Console:
    """A `hub` command with its stdout and stderr read line by line as they come."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.args, self.env, self.cwd = args, env, cwd
        self.lines: list[tuple[str, str]] = []  # (stream, line)
        self._new_line = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub",
            *self.args,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read("stdout", self.proc.stdout)),
            asyncio.create_task(self._read("stderr", self.proc.stderr)),
        ]

    async def _read(self, name: str, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.lines.append((name, raw.decode(errors="replace").rstrip("\n")))
            self._new_line.set()
        self._new_line.set()

    def text(self) -> str:
        return "\n".join(f"[{stream}] {line}" for stream, line in self.lines)

    async def wait_for(self, match: Callable[[str], bool], timeout: float = 30.0) -> str:
        """The first line (from the start) for which `match` is true; fails if the process
        ends or the time runs out before one appears."""
        assert self.proc is not None
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for _, line in self.lines[seen:]:
                    if match(line):
                        return line
                seen = len(self.lines)
                if all(reader.done() for reader in self._readers):
                    pytest.fail(f"hub exited ({await self.proc.wait()}) first:\n{self.text()}")
                self._new_line.clear()
                if len(self.lines) == seen:
                    await self._new_line.wait()

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.gather(*self._readers)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


@contextlib.asynccontextmanager
async def console(args: list[str], env: dict[str, str], cwd: Path) -> AsyncIterator[Console]:
    running = Console(args, env, cwd)
    await running.start()
    try:
        yield running
    finally:
        running.kill()
        await running.stop()


@pytest.fixture
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    name = f"hub_cli_{uuid.uuid4().hex[:12]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def connect_a_mirror(http: str, ws: str, admin_token: str) -> str:
    """Create a session with `admin_token` and connect its mirror (until `welcome`)."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(headers=headers) as client:
        response = await client.post(f"{http}/sessions", json={"child_name": "Console Child"})
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    async with open_client(ws, session_id, "mirror", token=response.json()["mirror_token"]):
        pass
    return session_id


# --- The console of `hub serve` ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("database", ["server", "embedded"])
async def test_default_serve_shows_info_lines_in_one_format_and_the_token_last(
    tmp_path: Path, fresh_database: str, database: str
) -> None:
    """The first start, as an operator meets it: no secret yet, default settings; with the
    embedded PostgreSQL also its first initdb."""
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        if database == "embedded":
            env = hub_env(stack.enter_context(embedded_data_dir()), None)
        else:
            env = hub_env(tmp_path / "data", fresh_database)
        hub = await stack.enter_async_context(
            console(["serve", "--port", str(port)], env, tmp_path)
        )
        token_line = await hub.wait_for(lambda line: "export TOKEN=" in line, timeout=90)
        admin_token = token_line.split("export TOKEN=", 1)[1].strip()
        await hub.wait_for(lambda _: [line for _, line in hub.lines].count(RULE) == 2)
        box_start = next(i for i, (_, line) in enumerate(hub.lines) if line == RULE)
        before = [line for _, line in hub.lines[:box_start] if line.strip()]
        assert len(before) <= MAX_LINES_BEFORE_TOKEN, hub.text()
        assert any("Uvicorn running on" in line for line in before), hub.text()
        await connect_a_mirror(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", admin_token)
        # The hub's own INFO lines show under the default level (Alembic's logging setup
        # used to raise it to WARNING).
        await hub.wait_for(lambda line: "INFO" in line and "mirror connected session=" in line)
        code = await hub.stop(signal.SIGINT)  # Ctrl-C
    assert code == 0, hub.text()
    box_end = max(i for i, (_, line) in enumerate(hub.lines) if line == RULE)
    for stream, line in hub.lines[:box_start] + hub.lines[box_end + 1 :]:
        assert not line.strip() or TEXT_LINE.match(line), (stream, line, hub.text())
    assert "Traceback" not in hub.text()


@pytest.mark.slow
@pytest.mark.parametrize("database", ["server", "embedded"])
async def test_json_logs_are_one_object_per_line(
    tmp_path: Path, fresh_database: str, database: str
) -> None:
    """HUB_LOG_FORMAT=json: every line on stdout and stderr is a JSON object, the first admin
    token included (as a record). The embedded run covers the embedded server's output."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        if database == "embedded":
            data_dir = stack.enter_context(embedded_data_dir())
            env = hub_env(data_dir, None, HUB_LOG_FORMAT="json")
        else:
            env = hub_env(tmp_path / "data", fresh_database, HUB_LOG_FORMAT="json")
        async with console(["serve", "--port", str(port)], env, tmp_path) as hub:
            line = await hub.wait_for(lambda line: "admin token" in line, timeout=90)
            admin_token = orjson.loads(line)["message"].rsplit(" ", 1)[1]
            session_id = await connect_a_mirror(
                f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", admin_token
            )
            connected = await hub.wait_for(lambda line: "mirror connected session=" in line)
            assert orjson.loads(connected)["session_id"] == session_id, connected
            await hub.stop()
    assert hub.lines, "the hub said nothing"
    for stream, line in hub.lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"not JSON on {stream}: {line!r}\n{hub.text()}")
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
    assert any(orjson.loads(line)["level"] == "INFO" for _, line in hub.lines), hub.text()


@pytest.mark.slow
async def test_log_level_applies_to_the_hub(tmp_path: Path, fresh_database: str) -> None:
    port = free_port()
    env = hub_env(
        tmp_path / "data", fresh_database, HUB_LOG_LEVEL="warning", HUB_AUTH_SECRET=TEST_SECRET
    )
    from tests.support.live import token

    async with console(["serve", "--port", str(port)], env, tmp_path) as hub:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while True:  # nothing to wait for on the console at this level: poll the port
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                assert time.monotonic() < deadline, hub.text()
                await asyncio.sleep(0.05)
        await connect_a_mirror(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", token("admin"))
        await hub.stop()
    assert not [line for _, line in hub.lines if " INFO " in line], hub.text()


# --- Errors a person can act on --------------------------------------------------------------


def closed_port_url(server_url: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/hub"


def unknown_host_url(server_url: str) -> str:
    return "postgresql://postgres@no-such-host.invalid:5432/hub"


def missing_database_url(server_url: str) -> str:
    url = make_url(server_url).set(database=f"hub_missing_{uuid.uuid4().hex[:8]}")
    return url.render_as_string(hide_password=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_url_for", "words"),
    [
        (closed_port_url, "refused the connection"),
        (unknown_host_url, "cannot resolve the database host 'no-such-host.invalid'"),
        (missing_database_url, "does not exist"),
    ],
    ids=["closed-port", "unknown-host", "missing-database"],
)
def test_unusable_database_is_one_short_error(
    tmp_path: Path, server_url: str, make_url_for: Callable[[str], str], words: str
) -> None:
    env = hub_env(tmp_path / "data", make_url_for(server_url))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "hub", "serve", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    elapsed = time.monotonic() - started
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0, output
    assert elapsed < 10, elapsed
    assert len(output) <= 3, output
    assert "Traceback" not in result.stderr, result.stderr
    assert any(words in line for line in output), output
    assert any("DATABASE_URL" in line for line in output), output  # what to check
    # The first admin token is shown once, when a start succeeds: a failed one makes no secret.
    assert not (tmp_path / "data" / "auth-secret").exists()


@pytest.mark.slow
async def test_wrong_password_is_one_short_error(tmp_path: Path) -> None:
    """A real server that checks passwords: an embedded PostgreSQL of the test's own whose
    pg_hba.conf asks for scram-sha-256 on its socket; the hub is given a wrong password."""
    from hub.storage.embedded import start_embedded

    with embedded_data_dir() as pg_dir:
        pg = await asyncio.to_thread(start_embedded, pg_dir)
        try:
            admin = make_url(pg.url).set(drivername="postgresql")
            conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
            try:
                await conn.execute("ALTER ROLE postgres PASSWORD 'the-right-one'")
                (pg.pgdata / "pg_hba.conf").write_text("local all all scram-sha-256\n")
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()
            wrong = admin.set(password="not-the-right-one").render_as_string(hide_password=False)
            started = time.monotonic()
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "hub", "serve", "--port", str(free_port())],
                env=hub_env(tmp_path / "data", wrong),
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            await asyncio.to_thread(pg.stop)
    elapsed = time.monotonic() - started
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0, output
    assert elapsed < 10, elapsed
    assert len(output) <= 3 and "Traceback" not in result.stderr, output
    assert any("refused the password of user 'postgres'" in line for line in output), output
    assert not any("not-the-right-one" in line for line in output), "the password was shown"


def test_unusable_data_directory_is_one_short_error(tmp_path: Path, database_url: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = hub_env(blocker / "data", database_url)
    result = subprocess.run(
        [sys.executable, "-m", "hub", "serve", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0, output
    assert len(output) <= 3 and "Traceback" not in result.stderr, output
    assert any("HUB_DATA_DIR" in line and str(blocker) in line for line in output), output


def test_wrong_password_is_explained_without_the_password() -> None:
    """The test server trusts every connection, so a refused password cannot be produced for
    real here: the message for asyncpg's error, wrapped as SQLAlchemy wraps it."""
    settings = Settings(database_url="postgresql+asyncpg://hub:hunter2@db.example:6432/hub")
    try:
        try:
            raise asyncpg.InvalidPasswordError('password authentication failed for user "hub"')
        except asyncpg.InvalidPasswordError as cause:
            raise RuntimeError("(sqlalchemy wrapper)") from cause
    except RuntimeError as wrapped:
        message = explain(wrapped, settings)
    assert message is not None
    assert "db.example:6432" in message and "password of user 'hub'" in message, message
    assert "hunter2" not in message
    assert explain(RuntimeError("a bug"), settings) is None  # bugs keep their traceback


@pytest.mark.slow
async def test_no_migrate_on_an_unreachable_database_warns_and_starts(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/hub"
    env = hub_env(tmp_path / "data", url, HUB_AUTH_SECRET=TEST_SECRET)
    async with console(["serve", "--port", str(free_port()), "--no-migrate"], env, tmp_path) as hub:
        warning = await hub.wait_for(lambda line: "WARNING" in line)
        assert "refused the connection" in warning, hub.text()
        await hub.wait_for(lambda line: "Uvicorn running on" in line)


# --- The CLI ---------------------------------------------------------------------------------


def hub_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version() -> None:
    result = hub_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"hub {importlib.metadata.version('mirror-hub')}"


def test_help_shows_defaults() -> None:
    serve = hub_cli("serve", "--help").stdout
    assert "(default: 127.0.0.1)" in serve and "(default: 8000)" in serve, serve
    assert "(default: 8h)" in hub_cli("token", "create", "--help").stdout


def test_downgrade_without_a_terminal_needs_yes(tmp_path: Path, fresh_database: str) -> None:
    env = hub_env(tmp_path / "data", fresh_database)
    assert hub_cli("db", "upgrade", env=env).returncode == 0
    refused = hub_cli("db", "downgrade", env=env)
    assert refused.returncode == 2, refused
    assert "--yes" in refused.stderr and "drops tables" in refused.stderr, refused.stderr
    assert "(head)" in hub_cli("db", "current", env=env).stdout  # nothing was dropped
    unknown = hub_cli("db", "upgrade", "no-such-revision", env=env)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr, unknown.stderr
    assert "no-such-revision" in unknown.stderr and "hub db history" in unknown.stderr
    # At a terminal it asks; anything but yes keeps the tables.
    assert answer_downgrade("n\n", env).returncode == 2
    assert "(head)" in hub_cli("db", "current", env=env).stdout
    assert answer_downgrade("y\n", env).returncode == 0
    assert "(head)" not in hub_cli("db", "current", env=env).stdout
    assert hub_cli("db", "upgrade", env=env).returncode == 0
    assert hub_cli("db", "downgrade", "--yes", env=env).returncode == 0
    assert "(head)" not in hub_cli("db", "current", env=env).stdout


def answer_downgrade(answer: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`hub db downgrade` with a terminal (a pseudo-terminal) on stdin, answering its question."""
    controller, terminal = os.openpty()
    try:
        os.write(controller, answer.encode())
        return subprocess.run(
            [sys.executable, "-m", "hub", "db", "downgrade"],
            env=env,
            cwd=ROOT,
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(controller)
        os.close(terminal)


# --- The formats -----------------------------------------------------------------------------


def record(exc: bool = False, **extra: str) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    entry = logging.LogRecord("hub.mirror", logging.INFO, __file__, 1, "a %s", ("b",), info)
    entry.__dict__.update(extra)
    return entry


def test_json_format_carries_context_and_keeps_tracebacks_on_one_line() -> None:
    line = JsonFormatter().format(record(exc=True, session_id="s-1", node="n-1"))
    assert "\n" not in line
    parsed = orjson.loads(line)
    assert parsed["message"] == "a b" and parsed["logger"] == "hub.mirror"
    assert (parsed["session_id"], parsed["node"], parsed["level"]) == ("s-1", "n-1", "INFO")
    assert "ValueError: boom" in parsed["exception"]
    sid = str(uuid.uuid4())
    named = logging.LogRecord("hub.mirror", logging.INFO, __file__, 1, "x session=%s", (sid,), None)
    assert orjson.loads(JsonFormatter().format(named))["session_id"] == sid
    text = TextFormatter().format(record(session_id="s-1"))
    assert TEXT_LINE.match(text) and text.endswith("a b session_id=s-1"), text
