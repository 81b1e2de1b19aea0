"""Node for the JS client's tests: found on PATH (v20+), a failure under CI, a skip elsewhere."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest

from tests.support import ROOT

CLIENT_DIR = ROOT / "clients" / "js"


def node_command() -> list[str]:
    """`node`, with the flag Node 20 needs for its global WebSocket (22 has it by default)."""
    found = shutil.which("node")
    if found:
        version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True)
        major = int(version.stdout.strip().lstrip("v").split(".")[0])
        if major >= 22:
            return [found]
        if major >= 20:
            return [found, "--experimental-websocket"]
    message = "Node.js 20 or newer is needed to test clients/js (apt-get install nodejs)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


async def run_node_tests(*test_files: Path, env: dict[str, str], timeout: float = 110) -> str:
    """Run the files with `node --test`; fail with Node's output unless every test passed."""
    proc = await asyncio.create_subprocess_exec(
        *node_command(),
        "--test",
        "--test-reporter=spec",
        *map(str, test_files),
        cwd=CLIENT_DIR,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"node --test failed ({proc.returncode}):\n{text}"
    return text


async def stored_seqs(database_url: str, session_id: str) -> list[int]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch(
            "SELECT seq FROM frames WHERE session_id = $1::uuid ORDER BY seq", session_id
        )
    finally:
        await conn.close()
    return [r["seq"] for r in rows]
