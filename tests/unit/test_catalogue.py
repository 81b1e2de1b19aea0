"""The metrics catalogue: the defaults, a clinic's file over them, and a bad file refused at
startup with a message that says where."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from hub import catalogue, cli
from hub.schemas import MetricInfo
from hub.settings import Settings, SettingsError

SIMULATED = ("accuracy", "stability", "max_angle", "knee_angle", "sway_cm", "depth")


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "catalogue.json"
    path.write_bytes(content if isinstance(content, bytes) else orjson.dumps(content))
    return path


def test_defaults_cover_the_simulated_metrics() -> None:
    metrics = catalogue.load(None).metrics
    assert set(SIMULATED) <= set(metrics)
    assert metrics["accuracy"].ucum == "%" and metrics["accuracy"].scale == 100
    assert metrics["max_angle"].ucum == "deg" and metrics["max_angle"].better == "higher"
    assert metrics["sway_cm"].better == "lower"


def test_file_entries_add_to_and_replace_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "metrics": {
                "reach_cm": {"display_name": "Reach", "unit": "cm", "ucum": "cm"},
                "accuracy": {"display_name": "Precision", "unit": "", "good_range": [0.5, 1]},
            }
        },
    )
    metrics = catalogue.load(path).metrics
    assert metrics["reach_cm"] == MetricInfo("Reach", "cm", "cm")
    # Replaced whole: what the file leaves out takes the field's default, not the hub's.
    assert metrics["accuracy"] == MetricInfo("Precision", "", good_range=(0.5, 1))
    assert metrics["stability"] == catalogue.DEFAULTS["stability"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "malformed"),
        ({"metrics": {"x": {"unit": "cm"}}}, "display_name"),
        ({"metrics": {"x": {"display_name": "X", "unit": "cm", "decimals": "2"}}}, "decimals"),
        ({"metrics": {"x": {"display_name": "X", "unit": "", "good_range": [3, 1]}}}, "low <="),
        ({"metrics": {"x": {"display_name": "X", "unit": "", "colour": "red"}}}, "colour"),
        ({"metrics": {"bad name": {"display_name": "X", "unit": ""}}}, "metrics"),
        ({"metric": {}}, "metric"),
    ],
)
def test_bad_file_is_refused_with_where_and_why(
    tmp_path: Path, content: object, fragment: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"HUB_METRICS_CATALOGUE": str(path)}, env_file=tmp_path / "no.env")
    message = str(caught.value)
    assert message.startswith("HUB_METRICS_CATALOGUE: "), message
    assert str(path) in message and fragment in message, message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="HUB_METRICS_CATALOGUE"):
        Settings.from_env({"HUB_METRICS_CATALOGUE": str(tmp_path / "nope.json")}, tmp_path / "x")


def test_hub_serve_stops_at_startup_on_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {"metrics": {"x": {"display_name": "X", "unit": "", "scale": -1}}})
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("HUB_METRICS_CATALOGUE", str(path))
    assert cli.main(["serve"]) == 2
    stderr = capsys.readouterr().err
    assert "configuration error: HUB_METRICS_CATALOGUE" in stderr and "scale" in stderr, stderr
