"""The hub installs like any Python service: a wheel built from the checkout (through its
sdist, as `python -m build` does), installed in a fresh virtualenv outside the repository,
serves, migrates and answers `hub db current`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support import ROOT
from tests.support.database import admin_sql
from tests.support.live import free_port

pytestmark = pytest.mark.slow

LOCAL_ONLY = (".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".*_cache", ".env")
SHIPPED = (
    "hub/migrations/env.py",
    "hub/migrations/script.py.mako",
    "hub/migrations/versions/",
    "hub/static/docs/swagger-ui/",
    "hub/static/watch/",
    "hub/py.typed",
    # The embedded PostgreSQL's keeper runs as `python -m hub.storage.embedded`.
    "hub/storage/embedded/__main__.py",
)


@pytest.fixture
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    name = f"hub_pkg_{uuid.uuid4().hex[:12]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def build(outdir: Path) -> tuple[Path, Path]:
    """The sdist, and the wheel built from it, from a copy of the checkout without what an
    editable install leaves there (its egg-info would feed the sdist a stale file list)."""
    source = outdir.parent / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LOCAL_ONLY))
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(outdir), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (sdist,) = outdir.glob("*.tar.gz")
    (wheel,) = outdir.glob("*.whl")
    return sdist, wheel


def fresh_venv(path: Path, wheel: Path) -> Path:
    """A virtualenv with the wheel installed and nothing of the checkout; its dependencies come
    from the test environment's site-packages (a .pth line; no download), behind its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path / "bin"


def hub_env(tmp_path: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "PYTHON"))}
    return {**env, "DATABASE_URL": url, "HUB_DATA_DIR": str(tmp_path / "data")}


async def test_wheel_installed_outside_the_checkout_serves_and_migrates(
    tmp_path: Path, fresh_database: str
) -> None:
    sdist, wheel = build(tmp_path / "dist")
    wheel_files = zipfile.ZipFile(wheel).namelist()
    with tarfile.open(sdist) as archive:
        sdist_files = archive.getnames()
    for shipped in SHIPPED:
        assert any(name.startswith(shipped) for name in wheel_files), shipped
        assert any(f"/{shipped}" in name for name in sdist_files), shipped

    bin_dir = fresh_venv(tmp_path / "venv", wheel)
    elsewhere = tmp_path / "elsewhere"  # no alembic.ini, no checkout, no .env here
    elsewhere.mkdir()
    env = hub_env(tmp_path, fresh_database)

    def hub(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir / "hub"), *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import hub; print(hub.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(tmp_path / "venv")), where  # the wheel, not the checkout

    version = hub("--version")
    assert version.returncode == 0 and version.stdout.strip() == "hub 0.1.0", version

    port = free_port()
    serve = subprocess.Popen(
        [str(bin_dir / "hub"), "serve", "--port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as http:
            while True:
                assert serve.poll() is None, serve.communicate()[0]
                try:
                    health = await http.get(f"http://127.0.0.1:{port}/health", timeout=1)
                    if health.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the installed hub did not come up"
                await asyncio.sleep(0.05)  # polling the port: the only readiness signal there is
    finally:
        serve.send_signal(signal.SIGTERM)
        output = serve.communicate(timeout=30)[0]
    # uvicorn ends by re-raising the signal it caught, once everything is shut down.
    assert serve.returncode in (0, -signal.SIGTERM), output
    assert "Running upgrade" in output, output  # it migrated the fresh database itself

    current = hub("db", "current")
    assert current.returncode == 0 and "(head)" in current.stdout, current
    history = hub("db", "history")
    assert history.returncode == 0 and "initial schema" in history.stdout, history
    init = hub("db", "init")  # tables that exist are left as they are
    assert init.returncode == 0 and "tables created" in init.stdout, init
