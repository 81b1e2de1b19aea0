"""The client examples as their README runs them: scripts in their own processes, against a
real hub."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
import pytest

from tests.support.live import ROOT, HubProcess, token

EXAMPLES = ROOT / "client_examples"


def run_example(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("credential", "session"),
    [("therapist", "unknown"), ("bad", "known")],
    ids=["unknown-session-4004", "bad-credential-1008"],
)
async def test_watcher_exits_non_zero_when_refused(
    hub_server: HubProcess, credential: str, session: str
) -> None:
    session_id = str(uuid.uuid4())
    if session == "known":
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token('admin')}"}) as c:
            response = await c.post(f"{hub_server.http}/sessions", json={"child_name": "W"})
        session_id = response.json()["id"]
    credential = token("therapist") if credential == "therapist" else "not-a-token"
    result = run_example(
        "watcher_client.py",
        "--url",
        hub_server.http,
        "--token",
        credential,
        "--session",
        session_id,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert ("closed 4004" if session == "unknown" else "closed 1008") in result.stdout, result


@pytest.mark.slow
def test_simulate_prints_each_session_with_its_watch_address(hub_server: HubProcess) -> None:
    staff = token("therapist")
    result = run_example(
        "simulate.py",
        "--url",
        hub_server.http,
        "--token",
        staff,
        "--mirrors",
        "2",
        "--rate",
        "10",
        "--seconds",
        "1",
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    addresses = [line for line in result.stdout.splitlines() if "/watch?session=" in line]
    assert len(addresses) == 2, result.stdout
    for line in addresses:
        session_id = line.split()[1]
        assert f"{hub_server.http}/watch?session={session_id}#token={staff}" in line, line
        uuid.UUID(session_id)
