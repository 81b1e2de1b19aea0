"""The servers a run measures, and how they start and stop.

A target is `hub` (one `hub serve` process), `hub-p2` (the same, its watchers speaking
protocol 2: frames in batches), `baseline` (benchmarks/baseline_app.py: one transaction per
frame, then broadcast), `fanout` (the same app storing nothing: the bare fan-out), or a
scaled-out hub, `hub-postgres` or `hub-redis`: two hub processes on one database joined by
that backplane (hub-redis with a redis-server of its own). Any hub target may also name
another commit of the hub, `hub@REF`: that commit is exported with `git archive` into a
temporary folder and run from there by this interpreter, so two versions of the hub are
measured in one run, with the same settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from . import ROOT
from .process import Process, free_port, http_json, http_ready, redis_ready

BASELINE_APP = ROOT / "benchmarks" / "baseline_app.py"
NODE_NAMES = "AB"


@dataclasses.dataclass(frozen=True)
class Variant:
    """What a target runs: the app, and for a scaled-out hub the backplane between its two
    processes (mirrors connect to the first, watchers to the second)."""

    app: str  # "hub" or "baseline"
    backplane: str | None = None  # None: one process; "postgres" or "redis": two
    watcher_protocol: int = 1  # 2: watchers get frames in `batch` messages
    stores: bool = True  # False: the bare fan-out, which writes no frame

    @property
    def processes(self) -> int:
        return 1 if self.backplane is None else 2


VARIANTS = {
    "hub": Variant("hub"),
    "hub-p2": Variant("hub", watcher_protocol=2),
    "baseline": Variant("baseline"),
    "fanout": Variant("baseline", stores=False),
    "hub-postgres": Variant("hub", "postgres"),
    "hub-redis": Variant("hub", "redis"),
}
TARGETS = tuple(VARIANTS)  # also the order of the columns
DEFAULT_TARGETS = ("hub", "baseline")  # clinic, max, all
SCALEOUT_TARGETS = ("hub", "hub-postgres", "hub-redis")


@dataclasses.dataclass(frozen=True)
class Target:
    """A target as the command line names it (`hub-redis`, `hub@HEAD~5`), resolved: what it
    runs, and the tree its hub processes import `hub` from."""

    name: str
    variant: Variant
    source: Path = ROOT
    commit: str | None = None  # `@REF`: the commit exported into `source`


def split_target(name: str) -> tuple[Variant, str | None]:
    """`hub-redis@REF` -> (the hub-redis variant, "REF"); ValueError if it is no target."""
    base, at, ref = name.partition("@")
    variant = VARIANTS.get(base)
    if variant is None:
        raise ValueError(f"unknown target {name!r}")
    if at and (variant.app != "hub" or not ref):
        raise ValueError(f"{name!r}: only the hub's targets take @REF (a git commit)")
    return variant, ref or None


def ordered(names: Iterable[str]) -> list[str]:
    """Target names in the order of the report's columns: that of TARGETS, each `@REF` right
    after its own target, in the order given."""
    return sorted(names, key=lambda n: (TARGETS.index(n.partition("@")[0]), "@" in n))


@contextlib.contextmanager
def resolved(names: Iterable[str]) -> Iterator[list[Target]]:
    """The named targets, each REF of an `@REF` exported once; the exports are removed on
    exit. A ref that is not a commit stops the benchmark before anything runs."""
    exports: dict[str, tuple[Path, str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-refs-") as folder:
        targets = []
        for name in names:
            variant, ref = split_target(name)
            if ref is None:
                targets.append(Target(name, variant))
                continue
            if ref not in exports:
                exports[ref] = export(ref, Path(folder) / str(len(exports)))
            source, commit = exports[ref]
            targets.append(Target(name, variant, source, commit))
        yield targets


def export(ref: str, into: Path) -> tuple[Path, str]:
    """Commit `ref` of this repository as files in `into` (git archive), and its id."""
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise SystemExit(f"hub@{ref}: not a commit of this repository")
    commit = found.stdout.strip()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True
    )
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    # This checkout's hub is installed in editable mode: make sure that, run from the export
    # with it on PYTHONPATH, the interpreter imports the exported package instead.
    probe = subprocess.run(
        [sys.executable, "-c", "import hub; print(hub.__file__)"],
        cwd=into,
        env={**os.environ, "PYTHONPATH": python_path(into)},
        capture_output=True,
        text=True,
    )
    imported = probe.stdout.strip()
    if not imported or not Path(imported).resolve().is_relative_to(into.resolve()):
        why = imported or (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"hub@{ref}: the export does not provide the hub package ({why})")
    return into, commit


def python_path(source: Path) -> str:
    """PYTHONPATH with `source` first."""
    return os.pathsep.join([str(source), *filter(None, [os.environ.get("PYTHONPATH")])])


class Server:
    """What the generator connects to: one server process (hub or baseline), or for a
    scaled-out target two hub processes, A and B, on one database, joined by a backplane
    (with the redis-server a Redis backplane needs, started for the run). Mirrors connect to
    the first process, watchers to the last, so with two every delivery crosses the backplane.
    Every process, redis-server included, is pinned to the same `cpus`: a scaled-out target
    gets the single process's CPU budget, and its server CPU is the sum over its processes."""

    def __init__(
        self,
        target: Target,
        database_url: str,
        cpus: str | None,
        watcher_protocol: int = 1,
        watcher_max_delay_ms: int = 0,
    ) -> None:
        self.target = target.name
        self.variant = target.variant
        # The variant's protocol, or a higher one the command line asks of every hub target.
        self.watcher_protocol = target.variant.watcher_protocol
        if target.variant.app == "hub":
            self.watcher_protocol = max(self.watcher_protocol, watcher_protocol)
        self.watcher_max_delay_ms = watcher_max_delay_ms
        self.source = target.source
        self.exported = target.commit is not None
        self.database_url = database_url
        self.cpus = cpus
        self.secret = secrets.token_urlsafe(32)
        self.data_dir = tempfile.mkdtemp(prefix="bench-hub-")
        self.nodes: list[Process] = []  # A (mirrors), then B (watchers) when scaled out
        self.redis: Process | None = None

    @property
    def mirror_port(self) -> int:
        return self.nodes[0].port

    @property
    def watch_port(self) -> int:
        return self.nodes[-1].port

    async def start(self) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "HUB_LOG_LEVEL": "warning",
            "HUB_DATA_DIR": self.data_dir,
            # Credentials: the hub verifies tokens this benchmark signs with the same secret.
            "HUB_AUTH_SECRET": self.secret,
            # Every client of the benchmark comes from 127.0.0.1; in a clinic each device has
            # its own address, so the per-address connection cap must not apply here.
            "HUB_MAX_CONNECTIONS_PER_CLIENT": "1000000",
            "HUB_BACKPLANE": self.variant.backplane or "memory",
        }
        if self.exported:  # `python -m hub` from the export imports the exported hub
            env["PYTHONPATH"] = python_path(self.source)
        if self.variant.backplane == "redis":
            if shutil.which("redis-server") is None:
                raise SystemExit(f"redis-server not found: needed by --target {self.target}")
            port = free_port()
            command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
            command += ["--save", "", "--appendonly", "no"]
            self.redis = Process("redis-server", command, port, self.cpus)
            await self.redis.wait_ready(redis_ready)
            env["HUB_BACKPLANE"] = f"redis://127.0.0.1:{port}/0"
        for index in range(self.variant.processes):
            port = free_port()
            if self.variant.app == "hub":
                command = [sys.executable, "-m", "hub", "serve", "--port", str(port)]
                if index:
                    command.append("--no-migrate")  # A migrated the database
            else:
                command = [sys.executable, str(BASELINE_APP), "--port", str(port)]
                command += ["--database-url", self.database_url]
                if not self.variant.stores:
                    command.append("--no-store")
            name = self.target
            if self.variant.processes > 1:
                name += "-" + NODE_NAMES[index]
            node = Process(name, command, port, self.cpus, env, self.source)
            self.nodes.append(node)
            await node.wait_ready(http_ready)  # B starts once A has migrated

    def describe(self) -> str:
        parts = [f"{n.name} pid {n.proc.pid} port {n.port}" for n in self.nodes]
        if self.redis is not None:
            parts.append(f"redis-server pid {self.redis.proc.pid} port {self.redis.port}")
        return ", ".join(parts)

    def everyone(self) -> list[Process]:
        return [*self.nodes, *([self.redis] if self.redis is not None else [])]

    def pids(self) -> set[int]:
        return {p.pid for process in self.everyone() for p in process.processes()}

    def cpu_seconds(self) -> list[float]:
        """Each server process's CPU seconds (A, then B)."""
        return [node.cpu_seconds() for node in self.nodes]

    def redis_cpu_seconds(self) -> float | None:
        return None if self.redis is None else self.redis.cpu_seconds()

    def rss(self) -> int:
        return sum(node.rss() for node in self.nodes)

    def peak_rss(self) -> int:
        return sum(node.peak_rss() for node in self.nodes)

    async def health(self) -> list[dict[str, Any]]:
        """Each hub process's /health `live` figures (empty for the baseline)."""
        if self.variant.app != "hub":
            return []
        out = []
        for node in self.nodes:
            with contextlib.suppress(OSError, ValueError, KeyError):
                url = f"http://127.0.0.1:{node.port}/health"
                out.append((await asyncio.to_thread(http_json, url))["live"])
        return out

    def exited(self) -> list[Process]:
        return [p for p in self.everyone() if p.proc.poll() is not None]

    def stop(self) -> None:
        """SIGTERM to every hub process at once (each stores what it buffered), then to the
        redis-server they publish through."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.wait()
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def mark_logs(self) -> None:
        for node in self.nodes:
            node.mark_log()

    def log_warnings(self) -> dict[str, tuple[Counter[str], int]]:
        """Per hub process (by name), what its log warned about during the run, and how many
        warning lines followed at teardown; then every log is deleted."""
        out = {node.name: node.warnings() for node in self.nodes}
        for process in self.everyone():
            with contextlib.suppress(OSError):
                os.unlink(process.log.name)
        return out

    def hello(self, role: str, session_id: uuid.UUID) -> str:
        """The `hello` for a mirror or watcher of `session_id`, with a credential when the hub
        has authentication (hub.auth); the baseline ignores the token."""
        protocol = self.watcher_protocol if role == "watcher" else 1
        message: dict[str, Any] = {"type": "hello", "protocol": protocol}
        if protocol == 2 and self.watcher_max_delay_ms:
            message["max_delay_ms"] = self.watcher_max_delay_ms
        try:
            from hub.auth import TokenService
        except ImportError:  # a hub without authentication
            return orjson.dumps(message).decode()
        tokens = TokenService(self.secret.encode())
        if role == "mirror":
            message["token"] = tokens.issue("mirror", f"bench:{session_id}", 3600, session_id)
        else:
            message["token"] = tokens.issue("therapist", "bench", 3600)
        return orjson.dumps(message).decode()
