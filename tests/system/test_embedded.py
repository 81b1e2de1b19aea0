"""Embedded PostgreSQL against a real server: start, query, stop; shared by several users, with
users killed, stale pid files and a killed server.

Every test asserts that no process of its server is left, by command line (the postmaster has
`-D <pgdata>` in it) and by the children collected while the server ran.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from hub.storage.embedded import (
    DataDirInUse,
    EmbeddedError,
    claim_for_serving,
    start_embedded,
)
from tests.support.live import embedded_processes

pytestmark = pytest.mark.slow

DEADLINE_S = 30.0


def wait_for(condition: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def postmasters(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in (proc.info["cmdline"] or []):
            found.append(proc)
    return [p for p in found if alive(p)]


def server_processes(pgdata: Path) -> list[psutil.Process]:
    """The postmaster for `pgdata` and all its children (checkpointer, io workers, backends)."""
    procs = []
    for postmaster in postmasters(pgdata):
        procs.append(postmaster)
        try:
            procs.extend(postmaster.children(recursive=True))
        except psutil.Error:
            pass
    return procs


def keepers(pgdata: Path) -> list[psutil.Process]:
    procs = embedded_processes(pgdata.parent)
    return [p for p in procs if "keep" in p.cmdline()]


def assert_server_gone(pgdata: Path, seen: list[psutil.Process]) -> None:
    assert seen, "no server processes were recorded while it ran"
    left = [p.pid for p in seen if alive(p)] + [p.pid for p in postmasters(pgdata)]
    assert not left, f"postgres processes left for {pgdata}: {left}"
    # The keeper notices within a second that nobody uses the server any more, and exits.
    wait_for(lambda: not keepers(pgdata), "the keeper to exit", timeout=10)


def sql(url: str, *statements: str) -> object:
    """Run statements through SQLAlchemy + asyncpg with the exact URL the hub would use."""

    async def run() -> object:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                result = None
                for statement in statements:
                    rows = await conn.execute(text(statement))
                    result = rows.scalar() if rows.returns_rows else None
                return result
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture
def scratch() -> Iterator[Callable[[], Path]]:
    """Makes fresh directories outside pytest's tmp_path. As root the server runs as the
    `embedded_postgres` user, which needs to traverse every parent folder, and any other pytest
    process starting meanwhile resets /tmp/pytest-of-root to 0700 (seen as flaky failures)."""
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="hub-embedded-")))
        return made[-1]

    yield make
    # A failing test must not leak a server into the next ones.
    leftovers = [
        proc
        for proc in psutil.process_iter(["name", "cmdline"])
        if (
            proc.info["name"] == "postgres"
            or "hub.storage.embedded" in (proc.info["cmdline"] or [])
        )
        and any(arg.startswith(str(path)) for arg in proc.info["cmdline"] or [] for path in made)
    ]
    for proc in leftovers:
        try:
            proc.kill()  # postmasters (their children exit when they notice) and keepers
        except psutil.Error:
            pass
    wait_for(lambda: not any(alive(p) for p in leftovers), "leftover servers to die")
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_dir(scratch: Callable[[], Path]) -> Path:
    return scratch() / "hub-data"


def run_hub_child(data_dir: Path, log: Path) -> subprocess.Popen[str]:
    """A hub-like child: uses the embedded server, prints its URL, then blocks on stdin until it
    is killed or stdin is closed (it then stops using the server)."""
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from hub.storage.embedded import start_embedded

        pg = start_embedded(Path(sys.argv[1]))
        print(pg.url, flush=True)
        sys.stdin.read()
        pg.stop()
        """
    )
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def read_url(child: subprocess.Popen[str], log: Path) -> str:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], DEADLINE_S)
    line = child.stdout.readline().strip() if ready else ""
    assert line.startswith("postgresql+asyncpg://"), f"child gave {line!r}: {log.read_text()}"
    return line


def test_start_query_stop(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    nested = data_dir / "a" / "b"
    caplog.set_level(logging.INFO, logger="hub.embedded")
    pg = start_embedded(nested)
    try:
        assert pg.pgdata == nested / "pgdata"
        # One line for the console; initdb's and the server's output go to the log file.
        assert [r.getMessage() for r in caplog.records] == [
            f"embedded PostgreSQL 18 at {pg.pgdata}, logs in {nested / 'postgresql.log'}"
        ]
        log = (nested / "postgresql.log").read_text()
        assert "Success." in log and "database system is ready to accept connections" in log
        socket_dir = pg.pgdata  # a short path: the socket sits in pgdata itself
        assert pg.url == f"postgresql+asyncpg://postgres@/postgres?host={socket_dir}"
        assert (socket_dir / ".s.PGSQL.5432").is_socket()
        seen = server_processes(pg.pgdata)
        assert seen[0].net_connections(kind="inet") == []  # Unix socket only, no TCP
        assert sql(pg.url, "select 1") == 1
    finally:
        pg.stop()
    assert_server_gone(pg.pgdata, seen)
    pg.stop()  # idempotent


def test_server_stops_with_its_last_user(data_dir: Path) -> None:
    first = start_embedded(data_dir)
    second = start_embedded(data_dir)  # another user (its own lock, as in another process)
    (postmaster,) = postmasters(first.pgdata)
    seen = server_processes(first.pgdata)
    first.stop()
    assert postmasters(first.pgdata) == [postmaster]  # still in use by `second`
    assert sql(second.url, "select 1") == 1
    second.stop()
    assert_server_gone(first.pgdata, seen)


def test_killed_user_neither_keeps_the_server_nor_takes_it(data_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "child.err"
    with run_hub_child(data_dir, log) as child:
        child_url = read_url(child, log)
        pg = start_embedded(data_dir)
        (postmaster,) = postmasters(pg.pgdata)
        child.kill()
        child.wait(DEADLINE_S)
    assert pg.url == child_url
    assert postmasters(pg.pgdata) == [postmaster]  # not taken away from us by the dead user
    assert sql(pg.url, "select 1") == 1
    seen = server_processes(pg.pgdata)
    pg.stop()
    assert_server_gone(pg.pgdata, seen)  # and not kept running for it either


def test_keeper_stops_the_server_of_a_killed_last_user(data_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "child.err"
    with run_hub_child(data_dir, log) as child:
        read_url(child, log)
        seen = server_processes(data_dir / "pgdata")
        assert len(keepers(data_dir / "pgdata")) == 1
        child.kill()
        child.wait(DEADLINE_S)
    wait_for(lambda: not postmasters(data_dir / "pgdata"), "the keeper to stop the server", 15)
    assert_server_gone(data_dir / "pgdata", seen)
    assert (
        "no process uses the embedded PostgreSQL any more"
        in (data_dir / "postgresql.log").read_text()
    )


def test_server_left_without_keeper_is_adopted_and_stopped(data_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "child.err"
    pgdata = data_dir / "pgdata"
    with run_hub_child(data_dir, log) as child:
        read_url(child, log)
        (keeper,) = keepers(pgdata)
        keeper.kill()  # the backstop gone too: nothing stops the server when ...
        wait_for(lambda: not alive(keeper), "the keeper to die")  # a zombie of the child
        child.kill()  # ... its last user is killed
        child.wait(DEADLINE_S)
    (orphan,) = postmasters(pgdata)
    pg = start_embedded(data_dir)
    assert postmasters(pgdata) == [orphan]  # reused, not doubled
    assert len(keepers(pgdata)) == 1  # and kept again
    seen = server_processes(pgdata)
    pg.stop()
    assert_server_gone(pgdata, seen)


def test_child_that_returns_stops_the_server(data_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "child.err"
    with run_hub_child(data_dir, log) as child:
        read_url(child, log)
        seen = server_processes(data_dir / "pgdata")
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(DEADLINE_S) == 0, log.read_text()
    assert_server_gone(data_dir / "pgdata", seen)


def test_watchdog_starts_a_killed_server_again(data_dir: Path) -> None:
    pg = start_embedded(data_dir)
    try:
        pg.watch()
        sql(pg.url, "create table kept (v text)", "insert into kept values ('still here')")
        (killed,) = postmasters(pg.pgdata)
        killed.kill()
        wait_for(
            lambda: [p.pid for p in postmasters(pg.pgdata)] == [pg.pid] != [killed.pid],
            "a new server",
            timeout=15,
        )
        assert sql(pg.url, "select v from kept") == "still here"  # same URL, same data
        seen = server_processes(pg.pgdata)
    finally:
        pg.stop()
    assert_server_gone(pg.pgdata, seen)


@pytest.fixture
def stale_pid_source(
    request: pytest.FixtureRequest, scratch: Callable[[], Path]
) -> Iterator[tuple[int, Callable[[], bool]]]:
    """(pid, still_fine) for a process that is not the server of the test's pgdata."""
    kind = request.param
    if kind == "own pid":
        yield os.getpid(), lambda: True
    elif kind == "zombie":
        # `true` exits at once; nobody reaps it until wait() below, so it stays a zombie.
        zombie = subprocess.Popen(["true"])
        try:
            proc = psutil.Process(zombie.pid)
            wait_for(lambda: proc.status() == psutil.STATUS_ZOMBIE, "a zombie")
            yield zombie.pid, lambda: proc.status() == psutil.STATUS_ZOMBIE
        finally:
            zombie.wait()
    else:  # a live postgres of another data dir (as after pid reuse): not ours, leave it alone
        other = start_embedded(scratch() / "other")
        try:
            (postmaster,) = postmasters(other.pgdata)
            yield postmaster.pid, lambda: alive(postmaster) and sql(other.url, "select 1") == 1
        finally:
            other.stop()
        assert_server_gone(other.pgdata, [postmaster])


@pytest.mark.parametrize("stale_pid_source", ["own pid", "zombie", "other postgres"], indirect=True)
def test_stale_postmaster_pid(
    data_dir: Path, stale_pid_source: tuple[int, Callable[[], bool]]
) -> None:
    stale_pid, still_fine = stale_pid_source
    pg = start_embedded(data_dir)
    try:
        real = (pg.pgdata / "postmaster.pid").read_text()
    finally:
        pg.stop()
    lines = real.splitlines(keepends=True)
    pidfile = pg.pgdata / "postmaster.pid"
    pidfile.write_text(f"{stale_pid}\n" + "".join(lines[1:]))

    pg = start_embedded(data_dir)
    try:
        assert int(pidfile.read_text().split()[0]) != stale_pid
        assert sql(pg.url, "select 1") == 1
        seen = server_processes(pg.pgdata)
    finally:
        pg.stop()
    assert_server_gone(pg.pgdata, seen)
    assert still_fine()


def test_restart_keeps_data(data_dir: Path) -> None:
    pg = start_embedded(data_dir)
    try:
        sql(pg.url, "create table kept (v text)", "insert into kept values ('still here')")
        seen = server_processes(pg.pgdata)
    finally:
        pg.stop()
    assert_server_gone(pg.pgdata, seen)

    pg = start_embedded(data_dir)
    try:
        assert sql(pg.url, "select v from kept") == "still here"
        seen = server_processes(pg.pgdata)
    finally:
        pg.stop()
    assert_server_gone(pg.pgdata, seen)


def test_failed_start_reports_server_log(data_dir: Path) -> None:
    pg = start_embedded(data_dir)
    pg.stop()
    with (pg.pgdata / "postgresql.conf").open("a") as conf:
        conf.write("\nno_such_setting = 1\n")
    with pytest.raises(EmbeddedError, match="no_such_setting") as failure:
        start_embedded(data_dir)
    assert str(data_dir / "postgresql.log") in str(failure.value)
    assert postmasters(pg.pgdata) == []
    # The failed start left no share behind: a later user is the last one again.
    (pg.pgdata / "postgresql.conf").write_text(
        (pg.pgdata / "postgresql.conf").read_text().replace("no_such_setting = 1", "")
    )
    pg = start_embedded(data_dir)
    seen = server_processes(pg.pgdata)
    pg.stop()
    assert_server_gone(pg.pgdata, seen)


def test_data_dir_with_spaces(data_dir: Path) -> None:
    pg = start_embedded(data_dir / "with space")
    try:
        assert sql(pg.url, "select 1") == 1
        seen = server_processes(pg.pgdata)
    finally:
        pg.stop()
    assert_server_gone(pg.pgdata, seen)


def test_rejects_data_dir_initdb_cannot_quote(data_dir: Path) -> None:
    with pytest.raises(EmbeddedError, match="must not contain"):
        start_embedded(data_dir / 'with"quote')
    assert not (data_dir / 'with"quote').exists()


def test_long_data_dir_gets_a_short_socket_folder(data_dir: Path) -> None:
    deep = data_dir / ("d" * 60) / ("e" * 60)
    pg = start_embedded(deep)
    try:
        assert str(pg.pgdata) not in pg.url
        assert sql(pg.url, "select 1") == 1
        seen = server_processes(pg.pgdata)
    finally:
        pg.stop()
    assert_server_gone(pg.pgdata, seen)


def test_one_serving_hub_per_data_dir(data_dir: Path) -> None:
    with claim_for_serving(data_dir, 8123):
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()} on port 8123"):
            with claim_for_serving(data_dir, 8124):
                pass
    with claim_for_serving(data_dir, 8124):  # released: free again
        pass


def test_first_start_after_an_interrupted_initdb(data_dir: Path) -> None:
    # What a first start cut short leaves: initdb's half-made folder, an empty pgdata.
    (data_dir / "pgdata.new" / "global").mkdir(parents=True)
    (data_dir / "pgdata.new" / "PG_VERSION").write_text("18\n")
    (data_dir / "pgdata").mkdir()
    pg = start_embedded(data_dir)
    try:
        assert sql(pg.url, "select 1") == 1
        assert not (data_dir / "pgdata.new").exists()
        seen = server_processes(pg.pgdata)
    finally:
        pg.stop()
    assert_server_gone(pg.pgdata, seen)


def test_pgdata_with_files_but_no_cluster_is_left_alone(data_dir: Path) -> None:
    (data_dir / "pgdata").mkdir(parents=True)
    (data_dir / "pgdata" / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddedError, match="holds files but no database cluster"):
        start_embedded(data_dir)
    assert (data_dir / "pgdata" / "notes.txt").read_text() == "mine"


def test_users_arriving_and_leaving_at_once(data_dir: Path, tmp_path: Path) -> None:
    """Several processes start on a fresh data directory at the same moment (one initdb, one
    server), then leave in turn: the server stays up until the last one is gone."""
    children = []
    for i in range(4):
        log = tmp_path / f"child{i}.err"
        children.append((run_hub_child(data_dir, log), log))
    try:
        urls = {read_url(child, log) for child, log in children}
        assert len(urls) == 1
        (postmaster,) = postmasters(data_dir / "pgdata")
        seen = server_processes(data_dir / "pgdata")
        for child, log in children[:-1]:
            assert child.stdin is not None
            child.stdin.close()
            assert child.wait(DEADLINE_S) == 0, log.read_text()
            assert postmasters(data_dir / "pgdata") == [postmaster]
            assert sql(next(iter(urls)), "select 1") == 1
        last, log = children[-1]
        assert last.stdin is not None
        last.stdin.close()
        assert last.wait(DEADLINE_S) == 0, log.read_text()
    finally:
        for child, _ in children:
            if child.poll() is None:
                child.kill()
                child.wait(DEADLINE_S)
            assert child.stdout is not None
            child.stdout.close()
    assert_server_gone(data_dir / "pgdata", seen)
