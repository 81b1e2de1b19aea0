"""The metrics catalogue: how to show and judge each metric a mirror streams.

For each metric name: a display name, the unit as shown and its UCUM code (what the FHIR export
writes), the factor from the stored value to the shown one (accuracy is stored as 0-1 and shown
in %), decimals, the good range and the direction of better. The hub ships defaults for the
metrics its simulator and demo mirror send; a clinic adds or overrides entries with a JSON file
(HUB_METRICS_CATALOGUE), read once at startup:

    {"metrics": {"reach_cm": {"display_name": "Reach", "unit": "cm", "ucum": "cm",
                              "good_range": [20, 60], "better": "higher"}}}

An entry in the file replaces the default of the same name whole. Metrics in no entry are still
stored, exported and shown, under their raw name.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from hub.schemas import Catalogue, MetricInfo

DEFAULTS: dict[str, MetricInfo] = {
    "accuracy": MetricInfo(
        "Accuracy", "%", "%", scale=100, decimals=0, good_range=(70, 100), better="higher"
    ),
    "stability": MetricInfo(
        "Stability", "%", "%", scale=100, decimals=0, good_range=(70, 100), better="higher"
    ),
    "max_angle": MetricInfo(
        "Highest arm angle", "°", "deg", decimals=1, good_range=(140, 180), better="higher"
    ),
    "knee_angle": MetricInfo(
        "Knee angle", "°", "deg", decimals=1, good_range=(70, 110), better="lower"
    ),
    "depth": MetricInfo(
        "Squat depth", "%", "%", scale=100, decimals=0, good_range=(60, 100), better="higher"
    ),
    "sway_cm": MetricInfo("Sway", "cm", "cm", decimals=1, good_range=(0, 3), better="lower"),
}


class CatalogueError(ValueError):
    """The catalogue file cannot be used; the message says where and why."""


def load(path: Path | None) -> Catalogue:
    """The defaults, with the entries of the file at `path` (if any) over them."""
    metrics = dict(DEFAULTS)
    if path is not None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CatalogueError(f"cannot read {path}: {exc.strerror}") from None
        try:
            extra = msgspec.json.decode(raw, type=Catalogue)
        except msgspec.DecodeError as exc:
            # msgspec names the place: "Expected `number`, got `str` - at `$.metrics.x.decimals`"
            raise CatalogueError(f"{path} is not a valid metrics catalogue: {exc}") from None
        metrics.update(extra.metrics)
    return Catalogue(metrics=dict(sorted(metrics.items())))
