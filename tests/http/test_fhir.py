"""GET /sessions/{id}/fhir: a FHIR R4 Bundle that validates with the fhir.resources R4B
models, one Observation per finished task, the child by child_ref and by name only on request."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from tests.support.live import (
    HubProcess,
    create_session,
    new_task_id,
    open_client,
    send,
    staff_headers,
    task_frame,
    wait_acked,
)
from tests.support.streams import FRAMES, TASKS, session_script, stream

CHILD_NAME = "Zoë Example-Child"


async def streamed(hub: HubProcess) -> tuple[str, list[str]]:
    session_id = await create_session(hub.http, child_name=CHILD_NAME, child_ref="child-0042")
    task_ids = [new_task_id() for _ in TASKS]
    await stream(hub, session_id, session_script(task_ids))
    async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
        # A task still in progress: not in the Bundle.
        await send(mirror, task_frame(FRAMES + 1, new_task_id(), "started", "in_progress"))
        await wait_acked(mirror, FRAMES + 1)
    return session_id, task_ids


async def test_fhir_bundle_validates_and_matches_the_report(hub_server: HubProcess) -> None:
    session_id, task_ids = await streamed(hub_server)
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        response = await http.get(f"/sessions/{session_id}/fhir")
        report = (await http.get(f"/sessions/{session_id}/report")).json()
        audit = await http.get("/audit", params={"session_id": session_id})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    assert "export_fhir" in {e["action"] for e in audit.json()["items"]}
    assert "Zo" not in response.text and "Example-Child" not in response.text

    bundle = Bundle.model_validate_json(response.content)
    assert bundle.type == "collection"
    observations = [entry.resource for entry in bundle.entry or []]
    assert all(isinstance(o, Observation) for o in observations)
    assert [o.id for o in observations] == task_ids
    tasks = {t["task_id"]: t for t in report["tasks"]}
    for observation in observations:
        task = tasks[observation.id]
        assert observation.status == "final"
        assert observation.code.text == task["task_name"]
        assert observation.subject.identifier.value == "child-0042"
        assert observation.subject.display is None
        period = observation.effectivePeriod
        assert period.start == datetime.fromisoformat(task["first_frame_at"])
        assert period.end == datetime.fromisoformat(task["last_frame_at"])
        by_code = {c.code.coding[0].code: c for c in observation.component}
        assert by_code["outcome"].valueString == "success"
        assert float(by_code["duration"].valueQuantity.value) == 12.5
        assert set(by_code) == {"outcome", "duration", *task["metrics"]}
        accuracy = by_code["accuracy"].valueQuantity
        assert (accuracy.system, accuracy.code) == ("http://unitsofmeasure.org", "%")
        assert float(accuracy.value) == pytest.approx(task["metrics"]["accuracy"]["mean"] * 100)
        angle = by_code["max_angle"].valueQuantity
        assert angle.code == "deg"
        assert float(angle.value) == pytest.approx(task["metrics"]["max_angle"]["mean"])
        assert float(by_code["accuracy"].referenceRange[0].low.value) == 70


async def test_fhir_names_the_child_only_when_asked(hub_server: HubProcess) -> None:
    session_id, _ = await streamed(hub_server)
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        named = await http.get(f"/sessions/{session_id}/fhir", params={"include_name": "true"})
        bad = await http.get(f"/sessions/{session_id}/fhir", params={"include_name": "yes"})
    bundle = Bundle.model_validate_json(named.content)
    assert {e.resource.subject.display for e in bundle.entry or []} == {CHILD_NAME}
    assert bad.status_code == 422
    assert bad.json()["fields"][0]["field"] == "include_name"
