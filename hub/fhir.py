"""A session report as an HL7 FHIR R4 Bundle (type collection) of Observations.

One Observation per finished task (success, failed or skipped): its code is the task's name,
its effective period the device times of the task's first and last frame (the stream's own
clock), and it has a component per metric with the mean of the task's metric frames, in the
catalogue's UCUM unit where one is known, the catalogue's good range as its reference range,
plus the task's outcome and recorded duration. The child is referenced by `child_ref` only;
the name is added as the subject's display only when asked for.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hub.schemas import Catalogue, MetricInfo, MetricSummary, SessionReport, TaskReport

FINISHED = ("success", "failed", "skipped")
SYSTEM = "urn:mirror-hub"  # this hub's own code systems; no standard code covers exercises
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _quantity(value: float, unit: str | None, ucum: str | None) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit:
        quantity["unit"] = unit
    if ucum:
        quantity["system"] = UCUM
        quantity["code"] = ucum
    return quantity


def _metric_component(name: str, summary: MetricSummary, info: MetricInfo | None) -> dict[str, Any]:
    scale = info.scale if info else 1.0
    unit, ucum = (info.unit, info.ucum) if info else (None, None)
    display = info.display_name if info else name
    component: dict[str, Any] = {
        "code": {
            "coding": [{"system": f"{SYSTEM}/metric", "code": name, "display": display}],
            "text": (
                f"{display}, mean of {summary.count} samples "
                f"(min {summary.min * scale:g}, max {summary.max * scale:g})"
            ),
        },
        "valueQuantity": _quantity(summary.mean * scale, unit, ucum),
    }
    if info is not None and info.good_range is not None:
        low, high = info.good_range
        component["referenceRange"] = [
            {"low": _quantity(low, unit, ucum), "high": _quantity(high, unit, ucum)}
        ]
    return component


def _observation(
    task: TaskReport, report: SessionReport, catalogue: Catalogue, subject: dict[str, Any] | None
) -> dict[str, Any]:
    components: list[dict[str, Any]] = [
        {
            "code": {"coding": [{"system": f"{SYSTEM}/task", "code": "outcome"}]},
            "valueString": task.status,
        }
    ]
    if task.duration_seconds is not None:
        components.append(
            {
                "code": {"coding": [{"system": f"{SYSTEM}/task", "code": "duration"}]},
                "valueQuantity": _quantity(task.duration_seconds, "s", "s"),
            }
        )
    for name, summary in task.metrics.items():
        components.append(_metric_component(name, summary, catalogue.metrics.get(name)))
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(task.task_id),
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "activity"}]}],
        "code": {
            "coding": [{"system": f"{SYSTEM}/task", "code": task.task_name}],
            "text": task.task_name,
        },
        "component": components,
    }
    if subject is not None:
        observation["subject"] = subject
    if task.first_frame_at is not None and task.last_frame_at is not None:
        observation["effectivePeriod"] = {
            "start": _time(task.first_frame_at),
            "end": _time(task.last_frame_at),
        }
    else:  # a task recorded over HTTP only: no stream to take the times from
        observation["effectiveDateTime"] = _time(report.created_at)
    return observation


def bundle(
    report: SessionReport, catalogue: Catalogue, child_name: str | None = None
) -> dict[str, Any]:
    """The Bundle; `child_name` only when the caller asked for it."""
    subject: dict[str, Any] | None = None
    if report.child_ref is not None:
        subject = {"identifier": {"system": f"{SYSTEM}/child-ref", "value": report.child_ref}}
    if child_name is not None:
        subject = {**(subject or {}), "display": child_name}
    return {
        "resourceType": "Bundle",
        "id": str(report.session_id),
        "type": "collection",
        "timestamp": _time(datetime.now(UTC)),
        "entry": [
            {
                "fullUrl": f"urn:uuid:{task.task_id}",
                "resource": _observation(task, report, catalogue, subject),
            }
            for task in report.tasks
            if task.status in FINISHED
        ],
    }
