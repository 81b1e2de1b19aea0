"""GET /catalogue: the defaults, or a clinic's file over them."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import httpx
import orjson

from hub.app import create_app
from hub.catalogue import DEFAULTS
from hub.settings import Settings
from tests.support.live import staff_headers


async def test_catalogue_serves_the_defaults(client: httpx.AsyncClient) -> None:
    response = await client.get("/catalogue")
    assert response.status_code == 200, response.text
    metrics = response.json()["metrics"]
    assert set(metrics) == set(DEFAULTS)
    assert metrics["accuracy"] == {
        "display_name": "Accuracy",
        "unit": "%",
        "ucum": "%",
        "scale": 100.0,
        "decimals": 0,
        "good_range": [70.0, 100.0],
        "better": "higher",
    }


async def test_catalogue_serves_the_clinics_file(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "catalogue.json"
    entry = {"display_name": "Reach", "unit": "cm", "ucum": "cm", "good_range": [20, 60]}
    path.write_bytes(orjson.dumps({"metrics": {"reach_cm": entry}}))
    app = create_app(dataclasses.replace(settings, metrics_catalogue=path))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://hub.test",
                headers=staff_headers("therapist"),
            )
        )
        metrics = (await http.get("/catalogue")).json()["metrics"]
    assert metrics["reach_cm"]["display_name"] == "Reach"
    assert metrics["reach_cm"]["good_range"] == [20, 60]
    assert set(metrics) == {*DEFAULTS, "reach_cm"}
