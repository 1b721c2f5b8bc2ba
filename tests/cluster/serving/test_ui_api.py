"""The API the playground needs beyond linking, over real HTTP on Ray Serve: `/ui/` itself, the KB browser's
`GET /entities?q=` (paging, validation, the API's error body) and entity images as small JPEGs."""

from __future__ import annotations

import io


def test_ui_is_served_by_the_ingress(client):
    root = client.get("/ui", follow_redirects=True)
    assert root.status_code == 200 and "MEL playground" in root.text
    assert "http://" not in root.text and "https://" not in root.text  # nothing fetched from elsewhere
    for asset in ("app.js", "style.css"):
        assert client.get(f"/ui/{asset}").status_code == 200
    assert "/entities" in client.get("/openapi.json").json()["paths"]


def test_search_by_name_and_alias_with_paging(served_kb, client):
    entity = next(e for e in served_kb.entities if e["name"])
    page = client.get("/entities", params={"q": entity["name"].upper(), "limit": 100}).json()
    exact = [e["name"].casefold() == entity["name"].casefold() for e in page["entities"]]
    assert entity["entity_id"] in [e["entity_id"] for e in page["entities"]]
    assert exact == sorted(exact, reverse=True)  # exact (case-insensitive) name matches come first
    assert page["total"] >= 1 and page["limit"] == 100
    everything = client.get("/entities", params={"limit": 100, "offset": 0}).json()
    assert everything["total"] == len(served_kb.entities)
    second = client.get("/entities", params={"limit": 50, "offset": 50}).json()
    first = client.get("/entities", params={"limit": 50, "offset": 0}).json()
    ids = [e["entity_id"] for e in first["entities"] + second["entities"]]
    assert len(ids) == len(set(ids)) == 100  # pages do not overlap
    beyond = client.get("/entities", params={"offset": 10_000}).json()
    assert beyond["entities"] == [] and beyond["total"] == len(served_kb.entities)
    assert client.get("/entities", params={"q": "no such entity zzz"}).json()["total"] == 0
    assert isinstance(page["entities"][0]["attributes"], dict)  # the KB's JSON string, parsed


def test_search_aliases(served_kb, client):
    from kb_builder.shards import read_entities
    from kb_builder.storage import Storage

    rows = read_entities(Storage(served_kb.cfg.storage), served_kb.cfg.kb.name, ["entity_id", "aliases"])
    entity_id, alias = next((r["entity_id"], r["aliases"][0]) for r in rows.to_dicts() if r["aliases"])
    found = client.get("/entities", params={"q": alias, "limit": 100}).json()["entities"]
    assert entity_id in [e["entity_id"] for e in found]


def test_search_validation_uses_the_api_error_body(client):
    for params, status, field in [
        ({"limit": 0}, 422, "query.limit"),
        ({"limit": 101}, 422, "query.limit"),
        ({"offset": -1}, 422, "query.offset"),
        ({"limit": "ten"}, 422, "query.limit"),
        ({"q": "x" * 501}, 413, "q"),
    ]:
        reply = client.get("/entities", params=params)
        assert reply.status_code == status, params
        body = reply.json()
        assert body["field"] == field and body["request_id"] and field.split(".")[-1] in body["error"]


def test_entity_images_are_small_jpegs(served_kb, client):
    from PIL import Image

    entity = next(e for e in served_kb.entities if e["image_uris"])
    reply = client.get(f"/entities/{entity['entity_id']}/images/0")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(reply.content)).size) <= 256
    missing = client.get(f"/entities/{entity['entity_id']}/images/{len(entity['image_uris'])}")
    assert missing.status_code == 404 and missing.json()["field"] == "index"
    assert client.get("/entities/nope/images/0").json()["field"] == "entity_id"
