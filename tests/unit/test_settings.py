"""Configuration: DATABASE_URL forms, `.env` files, validated numbers, the CLI's answer."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hub.settings
from hub.settings import Settings, SettingsError, default_data_dir, normalize_database_url

PASSWORD = "hunter2-s3cret"
ACCEPTED_FORMS = ("postgresql://", "postgres://", "postgresql+asyncpg://")


def env_name(field: str) -> str:
    return "HUB_" + field.upper()


# Every integer and boolean knob, read from HUB_<FIELD NAME>: a knob added to Settings but not
# wired into from_env fails the tests below.
INT_FIELDS = [f.name for f in dataclasses.fields(Settings) if f.type == "int"]
BOOL_FIELDS = [f.name for f in dataclasses.fields(Settings) if f.type == "bool"]


def from_env(tmp_path: Path, **environ: str) -> Settings:
    """Settings from exactly `environ` and no `.env` (the file named does not exist)."""
    return Settings.from_env(environ=environ, env_file=tmp_path / "absent.env")


@pytest.mark.parametrize(
    "raw",
    [
        f"postgresql://hub:{PASSWORD}@db.example:5432/hub",
        f"postgres://hub:{PASSWORD}@db.example:5432/hub",
        f"postgresql+asyncpg://hub:{PASSWORD}@db.example:5432/hub",
        f"  postgres://hub:{PASSWORD}@db.example:5432/hub\n",
    ],
)
def test_accepted_database_url_forms_normalise_to_asyncpg(raw: str) -> None:
    expected = f"postgresql+asyncpg://hub:{PASSWORD}@db.example:5432/hub"
    assert normalize_database_url(raw) == expected


def test_database_url_from_environment_is_normalised(tmp_path: Path) -> None:
    settings = from_env(tmp_path, DATABASE_URL="postgres://u@h/db")
    assert settings.database_url == "postgresql+asyncpg://u@h/db"


@pytest.mark.parametrize("raw", ["", "   ", "\n"])
def test_empty_database_url_means_unset(tmp_path: Path, raw: str) -> None:
    assert from_env(tmp_path, DATABASE_URL=raw).database_url is None
    assert from_env(tmp_path).database_url is None


@pytest.mark.parametrize(
    "raw",
    [
        f"mysql://hub:{PASSWORD}@db.example/hub",
        f"sqlite:///{PASSWORD}.db",
        f"postgresql+psycopg://hub:{PASSWORD}@db.example/hub",
        # Scheme typos and values without a scheme: the password must not be echoed either.
        f"postgres:{PASSWORD}@localhost/hub",
        f"postgresql:/hub:{PASSWORD}@localhost/hub",
        f"hub:{PASSWORD}@localhost:5432/hub",
        PASSWORD,
        "garbage",
    ],
)
def test_bad_database_url_names_the_variable_and_the_forms(tmp_path: Path, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(tmp_path, DATABASE_URL=raw)
    message = str(caught.value)
    assert "DATABASE_URL" in message
    for form in ACCEPTED_FORMS:
        assert form in message
    assert PASSWORD not in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_env_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# Mirror Hub configuration\n"
        "\n"
        "DATABASE_URL=postgres://hub@db.example/hub\n"
        "export HUB_MAX_BODY_BYTES=2048\n"
        "HUB_LOG_LEVEL = 'DEBUG'\n"
        'HUB_DATA_DIR="/srv/mirror hub"\n'
        "not a setting line\n",
        encoding="utf-8",
    )
    settings = Settings.from_env(environ={}, env_file=env_file)
    assert settings.database_url == "postgresql+asyncpg://hub@db.example/hub"
    assert settings.max_body_bytes == 2048
    assert settings.log_level == "debug"
    assert settings.data_dir == Path("/srv/mirror hub")


def test_environment_takes_precedence_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "DATABASE_URL=postgres://from-file@db/hub\nHUB_REPLAY_FRAMES=10\nHUB_FLUSH_MAX_FRAMES=7\n",
        encoding="utf-8",
    )
    environ = {"DATABASE_URL": "postgresql://from-env@db/hub", "HUB_REPLAY_FRAMES": "20"}
    settings = Settings.from_env(environ=environ, env_file=env_file)
    assert settings.database_url == "postgresql+asyncpg://from-env@db/hub"
    assert settings.replay_frames == 20
    assert settings.flush_max_frames == 7  # not in the environment: the file's value


def test_missing_env_file_gives_defaults(tmp_path: Path) -> None:
    settings = from_env(tmp_path)
    assert settings == Settings(data_dir=settings.data_dir)
    assert settings.data_dir == default_data_dir()


def test_every_integer_and_boolean_setting_is_listed() -> None:
    assert len(INT_FIELDS) >= 9 and "max_body_bytes" in INT_FIELDS
    assert "auto_migrate" in BOOL_FIELDS


@pytest.mark.parametrize("field", INT_FIELDS)
def test_integer_settings_are_read(tmp_path: Path, field: str) -> None:
    assert getattr(from_env(tmp_path, **{env_name(field): " 123 "}), field) == 123
    default = getattr(Settings(), field)
    assert getattr(from_env(tmp_path, **{env_name(field): ""}), field) == default


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("raw", ["abc", "1.5", "0", "-3", "10MB"])
def test_bad_integer_setting_names_the_variable(tmp_path: Path, field: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(tmp_path, **{env_name(field): raw})
    assert env_name(field) in str(caught.value)


@pytest.mark.parametrize("field", BOOL_FIELDS)
@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("0", False), ("Yes", True)])
def test_boolean_settings_are_read(tmp_path: Path, field: str, raw: str, expected: bool) -> None:
    assert getattr(from_env(tmp_path, **{env_name(field): raw}), field) is expected


@pytest.mark.parametrize("field", BOOL_FIELDS)
def test_bad_boolean_setting_names_the_variable(tmp_path: Path, field: str) -> None:
    with pytest.raises(SettingsError, match=env_name(field)):
        from_env(tmp_path, **{env_name(field): "maybe"})


def test_auth_secret_is_not_in_repr(tmp_path: Path) -> None:
    settings = from_env(tmp_path, HUB_AUTH_SECRET=PASSWORD)
    assert settings.auth_secret == PASSWORD
    assert PASSWORD not in repr(settings)


def test_default_data_dir_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.settings.os, "geteuid", lambda: 0, raising=False)
    assert default_data_dir() == Path("/var/lib/mirror-hub")


def test_default_data_dir_as_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.settings.os, "geteuid", lambda: 1000, raising=False)
    path = default_data_dir()
    assert path.is_absolute()
    assert " " not in str(path)  # embedded PostgreSQL cannot start in such a path
    assert not str(path).startswith("/var/lib")


def test_data_dir_from_environment_expands_home(tmp_path: Path) -> None:
    assert from_env(tmp_path, HUB_DATA_DIR="~/hub-data").data_dir == Path.home() / "hub-data"


def run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "HUB_"))}
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        env={**environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("args", [("serve",), ("db", "current")])
def test_cli_exits_2_on_bad_database_url(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run_cli(tmp_path, *args, DATABASE_URL=f"mysql://hub:{PASSWORD}@x/db")
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hub: configuration error: DATABASE_URL")
    assert "postgresql://" in lines[0]
    assert PASSWORD not in result.stderr


def test_cli_exits_2_on_bad_database_url_in_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=mysql://x\n", encoding="utf-8")
    result = run_cli(tmp_path, "serve")
    assert result.returncode == 2, result
    assert result.stderr.startswith("hub: configuration error: DATABASE_URL")
    assert len(result.stderr.splitlines()) == 1


def test_cli_exits_2_on_bad_integer_setting(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", DATABASE_URL="postgres://x@h/db", HUB_MAX_BODY_BYTES="1MB")
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "hub: configuration error: HUB_MAX_BODY_BYTES must be an integer; got '1MB'"
    ]


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("", "memory"),
        ("memory", "memory"),
        ("postgres", "postgres"),
        ("redis://127.0.0.1:6379/0", "redis"),
        (f"rediss://:{PASSWORD}@cache.example:6380/1", "redis"),
    ],
)
def test_backplane_setting(tmp_path: Path, raw: str, kind: str) -> None:
    settings = from_env(tmp_path, HUB_BACKPLANE=raw)
    assert settings.backplane_kind == kind
    assert PASSWORD not in repr(settings)  # a Redis URL may carry a password


@pytest.mark.parametrize("raw", ["kafka", "redis", "Postgres", f"http://:{PASSWORD}@x"])
def test_bad_backplane_names_the_choices_not_the_value(tmp_path: Path, raw: str) -> None:
    with pytest.raises(SettingsError, match="HUB_BACKPLANE must be memory, postgres") as info:
        from_env(tmp_path, HUB_BACKPLANE=raw)
    assert PASSWORD not in str(info.value)


def test_log_level_and_format(tmp_path: Path) -> None:
    assert (from_env(tmp_path).log_level, from_env(tmp_path).log_format) == ("info", "text")
    settings = from_env(tmp_path, HUB_LOG_LEVEL=" Warning ", HUB_LOG_FORMAT="JSON")
    assert (settings.log_level, settings.log_format) == ("warning", "json")
    for name, raw in (("HUB_LOG_LEVEL", "verbose"), ("HUB_LOG_FORMAT", "logfmt")):
        with pytest.raises(SettingsError, match=name):
            from_env(tmp_path, **{name: raw})


def test_env_file_values_are_literal(tmp_path: Path) -> None:
    """No `${VAR}` expansion: a password with `$` in `.env` stays as written."""
    env_file = tmp_path / ".env"
    env_file.write_text("DATABASE_URL=postgres://hub:pa${HOME}@db/hub\n", encoding="utf-8")
    settings = Settings.from_env(environ={}, env_file=env_file)
    assert settings.database_url == "postgresql+asyncpg://hub:pa${HOME}@db/hub"
