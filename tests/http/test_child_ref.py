"""The child's pseudonymous reference: set on POST /sessions, returned, filtered on."""

from __future__ import annotations

import httpx
import pytest


async def create(client: httpx.AsyncClient, **body: object) -> dict[str, object]:
    response = await client.post("/sessions", json={"child_name": "Alice", **body})
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


async def test_child_ref_round_trips_and_defaults_to_null(client: httpx.AsyncClient) -> None:
    with_ref = await create(client, child_ref="child-0042")
    without = await create(client)
    assert with_ref["child_ref"] == "child-0042" and without["child_ref"] is None
    read = await client.get(f"/sessions/{with_ref['id']}")
    assert read.json()["child_ref"] == "child-0042"


async def test_list_filters_by_child_ref(client: httpx.AsyncClient) -> None:
    mine = [await create(client, child_ref="c-1") for _ in range(3)]
    await create(client, child_ref="c-2")
    await create(client)
    page = await client.get("/sessions", params={"child_ref": "c-1", "limit": 2})
    assert page.status_code == 200, page.text
    first = page.json()
    second = await client.get(
        "/sessions", params={"child_ref": "c-1", "cursor": first["next_cursor"]}
    )
    ids = [s["id"] for s in first["items"] + second.json()["items"]]
    assert ids == [s["id"] for s in reversed(mine)]
    assert second.json()["next_cursor"] is None
    none = await client.get("/sessions", params={"child_ref": "nobody"})
    assert none.json()["items"] == []


@pytest.mark.parametrize("bad", ["", "Alice Smith", "x" * 65, "-lead", "a\n", "é"])
async def test_bad_child_ref_is_refused(client: httpx.AsyncClient, bad: str) -> None:
    created = await client.post("/sessions", json={"child_name": "A", "child_ref": bad})
    assert created.status_code == 422, created.text
    assert created.json()["fields"][0]["field"] == "child_ref"
    listed = await client.get("/sessions", params={"child_ref": bad})
    assert listed.status_code == 422, listed.text
    assert listed.json()["fields"][0]["field"] == "child_ref"
