"""README, as a user meets it: `hub serve` with no DATABASE_URL (embedded PostgreSQL), the curl
examples run as printed, data survives a restart, Ctrl-C leaves no postgres process behind."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from tests.support.live import ROOT, HubProcess

PLACEHOLDER = re.compile(r"<(session_id|task_id)>")
# The first start frames the admin token in a command that uses it: `export TOKEN=…`.
ADMIN_TOKEN = re.compile(r"^\s+export TOKEN=(eyJ[\w-]+\.[\w-]+\.[\w-]+)\s*$", re.MULTILINE)


def curl_examples() -> list[tuple[str, Any]]:
    """(command, documented answer) pairs from README's curl block."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- curl-examples:start -->")[1].split("<!-- curl-examples:end -->")[0]
    lines = [line for line in block.splitlines() if line.startswith(("curl ", "# "))]
    pairs = []
    for command, answer in zip(lines[::2], lines[1::2], strict=True):
        assert command.startswith("curl ") and answer.startswith("# "), (command, answer)
        pairs.append((command, orjson.loads(answer[2:])))
    return pairs


def matches(actual: Any, documented: Any, ids: dict[str, str]) -> bool:
    """Same shape: same keys, equal values, where "…" is any value and <x_id> the id seen."""
    if isinstance(documented, str):
        if documented == "…":
            return True
        if PLACEHOLDER.fullmatch(documented):
            return actual == ids[documented[1:-1]]
        return bool(actual == documented)
    if isinstance(documented, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == documented.keys()
            and all(matches(actual[k], v, ids) for k, v in documented.items())
        )
    if isinstance(documented, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(documented)
            and all(matches(a, d, ids) for a, d in zip(actual, documented, strict=True))
        )
    if isinstance(documented, int | float) and not isinstance(documented, bool):
        return isinstance(actual, int | float) and actual == documented
    return bool(actual == documented)


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "postgres" and str(pgdata) in " ".join(
                proc.info["cmdline"] or []
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_fresh_start_curl_examples_restart_and_ctrl_c(
    tmp_path: Path, pg_data_dir: Path
) -> None:
    data_dir = pg_data_dir
    # No DATABASE_URL: the hub starts (and migrates) its embedded PostgreSQL. No signing
    # secret either: it makes one and prints an admin token once.
    hub = HubProcess(
        None, tmp_path / "hub.log", migrate=True, HUB_DATA_DIR=str(data_dir), HUB_AUTH_SECRET=""
    )
    await hub.start(timeout=90)
    pgdata = data_dir / "pgdata"
    assert postgres_processes(pgdata), "the embedded PostgreSQL should be running"
    secret_file = data_dir / "auth-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_bytes()
    admin_tokens = ADMIN_TOKEN.findall(hub.logs())
    assert len(admin_tokens) == 1, hub.logs()

    ids: dict[str, str] = {}
    env = {**os.environ, "TOKEN": admin_tokens[0]}
    for command, documented in curl_examples():
        command = command.replace("http://127.0.0.1:8000", hub.http)
        for name in ("session_id", "task_id"):
            command = command.replace(f"<{name}>", ids.get(name, f"<{name}>"))
        result = subprocess.run(
            ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30, check=True
        )
        answer = orjson.loads(result.stdout)
        if isinstance(answer, dict) and "task_name" in answer:
            ids.setdefault("task_id", answer["id"])
        elif isinstance(answer, dict) and "child_name" in answer:
            ids.setdefault("session_id", answer["id"])
        assert matches(answer, documented, ids), (command, answer, documented)

    # Ctrl-C: the hub exits and stops its PostgreSQL.
    assert await hub.stop(signal.SIGINT) == 0
    assert not postgres_processes(pgdata), "postgres left running after Ctrl-C"

    # Started again, the data is still there.
    await hub.start(timeout=90)
    assert secret_file.read_bytes() == secret  # same secret: old tokens stay valid
    assert len(ADMIN_TOKEN.findall(hub.logs())) == 1  # printed on the first start only
    async with httpx.AsyncClient() as client:
        headers = {"Authorization": f"Bearer {admin_tokens[0]}"}
        response = await client.get(f"{hub.http}/sessions/{ids['session_id']}", headers=headers)
    assert response.status_code == 200
    assert response.json()["child_name"] == "Alice"
    await hub.stop(signal.SIGINT)
    assert not postgres_processes(pgdata)
