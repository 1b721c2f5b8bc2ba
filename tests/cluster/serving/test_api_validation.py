"""Every client-error path of the served API answers 4xx with a message naming the field; internal errors are a
generic 500 with a request id; no bad request takes a replica down. Limits come from the `served_kb` config
(max_text_chars 500, max_image_bytes 100 kB, max_batch_mentions 8, max_body_bytes 200 kB)."""

from __future__ import annotations

import base64
import os
import shutil

import pytest

from tests.cluster.serving.helpers import index_collection, swap_alias
from tests.fixtures import wait_until


def check_error(reply, status: int, field: str, text: str = "") -> dict:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["field"] == field, body
    assert field in body["error"] or field == "body", body
    assert text.lower() in body["error"].lower(), body
    assert body["request_id"] and "Traceback" not in reply.text
    return body


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({"mention": "Damoza", "topk": 3}, "topk", "unknown field"),
        ({"mention": "Damoza", "filters": {"colour": "red"}}, "filters.colour", "unknown field"),
        ({"context": "no mention here"}, "mention", "required"),
        ({"mention": ""}, "mention", "at least 1"),
        ({"mention": 5}, "mention", "string"),
        ({"mention": "Damoza", "top_k": "3"}, "top_k", "integer"),
        ({"mention": "Damoza", "top_k": 0}, "top_k", "greater"),
        ({"mention": "Damoza", "explain": "yes"}, "explain", "boolean"),
        ({"mention": "Damoza", "filters": {"has_image": "true"}}, "filters.has_image", "boolean"),
        ({"mention": "Damoza", "image": 12}, "image", "string"),
    ],
)
def test_schema_errors_are_422_naming_the_field(client, body, field, text):
    check_error(client.post("/link", json=body), 422, field, text)


def test_body_that_is_not_json(client):
    reply = client.post("/link", content=b"{not json", headers={"content-type": "application/json"})
    check_error(reply, 422, "body", "json")


def test_bad_base64_and_undecodable_images(client):
    check_error(
        client.post("/link", json={"mention": "Damoza", "image": "%%%not-base64%%%"}), 400, "image", "base64"
    )
    junk = base64.b64encode(b"these bytes are no image format at all").decode()
    check_error(client.post("/link", json={"mention": "Damoza", "image": junk}), 400, "image", "decodable")
    truncated_png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).decode()
    check_error(client.post("/link", json={"mention": "Damoza", "image": truncated_png}), 400, "image")


def test_image_uris_outside_the_allowed_roots(served_kb, client):
    for uri in (
        "file:///etc/passwd",
        "/etc/hostname.png",
        f"{served_kb.cfg.storage.root}/../../../etc/x.png",
    ):
        body = check_error(client.post("/link", json={"mention": "Damoza", "image": uri}), 400, "image")
        assert body["error"] == "image: cannot load an image from this URI or path"  # no roots, no paths
    missing = f"{served_kb.cfg.storage.root}/sample_src/images/NOPE.png"
    check_error(
        client.post("/link", json={"mention": "Damoza", "image": missing}), 400, "image", "cannot load"
    )


def test_size_limits_are_413(client):
    check_error(client.post("/link", json={"mention": "a" * 501}), 413, "mention", "max_text_chars")
    check_error(client.post("/link", json={"mention": "a", "context": "b" * 501}), 413, "context")
    big_image = base64.b64encode(os.urandom(120_000)).decode()
    check_error(
        client.post("/link", json={"mention": "a", "image": big_image}), 413, "image", "max_image_bytes"
    )
    reply = client.post("/link", json={"mention": "a", "context": "c" * 300_000})
    assert reply.status_code == 413 and "max_body_bytes" in reply.json()["error"]
    too_many = {"mentions": [{"mention": f"m{i}"} for i in range(9)]}
    check_error(client.post("/link/batch", json=too_many), 413, "mentions", "max_batch_mentions")


def test_batch_errors_name_the_item(client):
    batch = {"mentions": [{"mention": "Damoza"}, {"mention": "Kurudo", "image": "%%%"}]}
    check_error(client.post("/link/batch", json=batch), 400, "mentions.1.image", "base64")
    batch = {"mentions": [{"mention": "Damoza"}, {"mention": "Kurudo", "top_k": "x"}]}
    check_error(client.post("/link/batch", json=batch), 422, "mentions.1.top_k")
    check_error(client.post("/link/batch", json={"mentions": []}), 422, "mentions")
    check_error(client.post("/link/batch", json={"mention": "x"}), 422, "mention", "unknown field")


def test_internal_error_is_a_generic_500_and_the_app_survives(served_kb, client):
    """A collection whose rerank feature cache is missing makes the reranker fail: the client gets a 500
    with a request id and no internals; after the alias goes back, the same replicas answer again."""

    from kb_builder.storage import Storage

    name = f"{served_kb.cfg.milvus.collection}_v3"
    index_collection(served_kb.cfg, served_kb.model_dir, name, served_kb.entities[:30])
    shutil.rmtree(Storage(served_kb.cfg.storage).join("features", name))
    swap_alias(served_kb.cfg, name)
    try:
        reply = wait_until(
            lambda: (
                (
                    r := client.post("/link", json={"mention": "Damoza"}, headers={"x-request-id": "req-500"})
                ).status_code
                != 200
                and r
            ),
            what="the broken collection to be served",
        )
        assert reply.status_code == 500
        assert reply.json() == {"error": "internal error", "field": None, "request_id": "req-500"}
    finally:
        swap_alias(served_kb.cfg, served_kb.collection)
    wait_until(lambda: client.post("/link", json={"mention": "Damoza"}).status_code == 200, what="recovery")
    assert client.post("/link", json={"mention": "Damoza"}).status_code == 200
    assert client.get("/healthz").status_code == 200
