"""What a client can and cannot make the server do (issue 17, serving): quoted and non-ASCII entity ids end to end,
filters over arbitrary Unicode, decoder failures, headers, error bodies, batch counting, and no fetches on a
client's behalf by default. In-process linker over real HTTP and real Milvus Lite (see hostile_app.py)."""

from __future__ import annotations

import base64
import io
import re
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cluster.serving.hostile_app import QUIRKY, CountingServer, start_app
from tests.fixtures import wait_until


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    hostile = start_app(tmp_path_factory.mktemp("hostile"), [])
    yield hostile
    hostile.server.should_exit = True


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app.url, timeout=120) as client:
        yield client


def candidate_ids(reply) -> list[str]:
    assert reply.status_code == 200, reply.text
    return [c["entity_id"] for c in reply.json()["candidates"]]


def assert_clean(body: dict, field: str) -> None:
    """The standard body, naming the field, with no server path, repr or memory address in it."""
    assert body["field"] == field and body["request_id"], body
    text = body["error"]
    assert field in text, body
    assert not re.search(r"0x[0-9a-f]{6,}|<\w+[ .]|/tmp/|/work/|/root/|/home/|Traceback", text), body


# -- item 6: quoted ids ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("entity_id", "name"), QUIRKY)
def test_every_quirky_id_links_filters_and_is_served(http, entity_id, name):
    assert entity_id in candidate_ids(http.post("/link", json={"mention": name, "top_k": 30}))
    only = http.post("/link", json={"mention": name, "filters": {"entity_ids": [entity_id]}})
    assert candidate_ids(only) == [entity_id]
    by_name = http.post("/link", json={"mention": "x", "filters": {"name": name}})
    assert candidate_ids(by_name) == [entity_id]
    entity = http.get("/entities/" + quote(entity_id, safe=""))
    assert entity.status_code == 200 and entity.json()["name"] == name, entity.text


# -- item 3: filters over arbitrary Unicode ----------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=20), ids=st.lists(st.text(max_size=12), max_size=4))
def test_unicode_filters_restrict_exactly_or_are_422(http, app, name, ids):
    known = {e["entity_id"]: e["name"] for e in app.entities}
    for filters, field, expect in (
        ({"name": name}, "filters.name", {i for i, n in known.items() if n == name}),
        ({"entity_ids": ids}, "filters.entity_ids", set(ids) & set(known)),
    ):
        reply = http.post("/link", json={"mention": "x", "top_k": 30, "filters": filters})
        if reply.status_code == 422:
            assert reply.json()["field"].startswith(field), reply.text
            assert any(0xD800 <= ord(c) <= 0xDFFF for c in name + "".join(ids))
            continue
        assert set(candidate_ids(reply)) == expect


def test_lone_surrogates_are_422_naming_the_field(http):
    body = '{"mention": "x", "filters": {"entity_ids": ["\\ud800"]}}'
    reply = http.post("/link", content=body.encode(), headers={"content-type": "application/json"})
    assert reply.status_code == 422 and reply.json()["field"].startswith("filters.entity_ids"), reply.text


def test_partition_filter_on_a_kb_without_partitions_is_400_and_the_server_goes_on(http):
    reply = http.post("/link", json={"mention": "x", "filters": {"partition": "person"}})
    assert reply.status_code == 400, reply.text
    assert_clean(reply.json(), "filters.partition")
    batch = {"mentions": [{"mention": "x"}, {"mention": "y", "filters": {"partition": "p"}}]}
    reply = http.post("/link/batch", json=batch)
    assert reply.status_code == 400 and reply.json()["field"] == "mentions.1.filters.partition", reply.text
    assert http.post("/link", json={"mention": "x"}).status_code == 200


# -- item 3: images and headers ----------------------------------------------------------------------------
def corrupt_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[12:16] = b"\x00\x01\x02\x03"  # the IHDR chunk type
    return bytes(data)


@pytest.mark.parametrize(
    "image",
    [
        "data:foo",
        "data:image/png;base64",
        base64.b64encode(corrupt_png()).decode(),
        base64.b64encode(b"BM" + b"\xff" * 60).decode(),  # a DIB header that lies
        base64.b64encode(b"icns\x00\x00\x00\x20" + b"\x00" * 24).decode(),
    ],
)
def test_every_decoder_failure_is_a_400_naming_image(http, image):
    reply = http.post("/link", json={"mention": "x", "image": image})
    assert reply.status_code == 400, reply.text
    assert_clean(reply.json(), "image")


def test_invalid_request_id_header_is_a_400_with_the_standard_body(http):
    reply = http.get("/healthz", headers={"x-request-id": "caf\xe9".encode("latin-1")})
    assert reply.status_code == 400, reply.text
    assert reply.json()["field"] == "x-request-id" and reply.json()["request_id"]
    assert http.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"


# -- item 4: error bodies ------------------------------------------------------------------------------------
def test_missing_and_non_image_files_under_a_root_look_the_same(http, app):
    root = app.cfg.storage.root
    not_image = f"{root}/hostile-not-image.png"
    with open(not_image, "w") as fh:
        fh.write("plain text")
    bodies = [
        http.post("/link", json={"mention": "x", "image": uri}).json()
        for uri in (not_image, f"{root}/no-such-file.png", "/etc/passwd.png", "file:///etc/hostname.png")
    ]
    assert len({b["error"] for b in bodies}) == 1, bodies
    for body in bodies:
        assert_clean(body, "image")


def test_entities_expose_no_server_paths(http, app):
    for entity in app.entities[:5]:
        reply = http.get(f"/entities/{entity['entity_id']}")
        if reply.status_code == 200:
            assert all(u.startswith(("http://", "https://")) for u in reply.json()["image_uris"])
    assert http.get("/entities/nope").json()["error"] == "entity_id: unknown entity"


# -- item 5: counting first ------------------------------------------------------------------------------
def test_a_million_item_batch_is_refused_by_count(http):
    body = b'{"mentions": [' + b",".join([b"{}"] * 1_000_000) + b"]}"
    reply = http.post("/link/batch", content=body, headers={"content-type": "application/json"})
    assert reply.status_code in (413, 422) and reply.json()["field"] in ("mentions", "body"), reply.text


# -- items 1-2: no fetch on a client's behalf by default ---------------------------------------------------
def ssrf_forms(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/x.png",
        f"http://127.1:{port}/x.png",
        f"http://2130706433:{port}/x.png",
        f"http://0x7f000001:{port}/x.png",
        f"HTTP://127.0.0.1:{port}/x.png",
        f"http://[::1]:{port}/x.png",
        f"http://[::ffff:127.0.0.1]:{port}/x.png",
        f"http://user:pw@127.0.0.1:{port}/x.png",
        f"http://localhost:{port}/redirect?to=http://127.0.0.1:{port}/x.png",
        f"https://127.0.0.1:{port}/x.png",
        "s3://somebody-elses-bucket/x.png",
    ]


def test_no_ssrf_form_reaches_a_loopback_server_by_default(http):
    target = CountingServer()
    try:
        bodies = set()
        for uri in ssrf_forms(target.port):
            reply = http.post("/link", json={"mention": "x", "image": uri})
            assert reply.status_code == 400, (uri, reply.text)
            assert_clean(reply.json(), "image")
            bodies.add(reply.json()["error"])
        assert target.hits == 0 and len(bodies) == 1, bodies
    finally:
        target.close()


# -- items 1-2 with fetching on: allow-list, addresses, slow URLs ----------------------------------------------
@pytest.fixture(scope="module")
def fetching(app):
    """A second HTTP app over the same linker with remote fetches on for 127.0.0.1 (private allowed: a test)."""
    from dataclasses import replace

    from cluster.serve.http import create_app
    from tests.cluster.serving.hostile_app import serve_http

    serve_cfg = replace(
        app.cfg.serve,
        fetch_remote_images=True,
        fetch_allowed_hosts=["127.0.0.1"],
        fetch_allow_private=True,
        fetch_timeout_s=8.0,  # long enough for 32 fetches to connect on a loaded CI machine
        max_concurrent_fetches=32,
    )
    url, server = serve_http(create_app(app.linker, serve_cfg, app.loader))
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client
    server.should_exit = True


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(buf, "PNG")
    return buf.getvalue()


def test_allowed_host_is_fetched_and_others_are_not(fetching):
    target = CountingServer(png_bytes())
    try:
        ok = fetching.post("/link", json={"mention": "x", "image": f"http://127.0.0.1:{target.port}/a.png"})
        assert ok.status_code == 200 and target.hits == 1, ok.text
        for uri in ssrf_forms(target.port)[1:]:  # every other spelling is not the listed host
            if uri.startswith("HTTP://127.0.0.1"):
                continue  # the listed host itself: the scheme's case does not matter
            reply = fetching.post("/link", json={"mention": "x", "image": uri})
            assert (
                reply.status_code == 400
                and reply.json()["error"] == "image: cannot fetch an image from this URL"
            )
        redirect = f"http://127.0.0.1:{target.port}/redirect?to=http://localhost:{target.port}/a.png"
        reply = fetching.post("/link", json={"mention": "x", "image": redirect})
        assert reply.status_code == 400 and target.hits == 2  # the redirect hop to an unlisted host: refused
    finally:
        target.close()


def test_slow_urls_cannot_starve_health_or_other_requests(fetching):
    import concurrent.futures

    slow = CountingServer(png_bytes(), slow_s=0.5)  # ~40 s per body: only the total deadline ends it
    uri = f"http://127.0.0.1:{slow.port}/slow.png"
    try:
        with concurrent.futures.ThreadPoolExecutor(33) as pool:
            futures = [
                pool.submit(fetching.post, "/link", json={"mention": "x", "image": uri}) for _ in range(32)
            ]
            wait_until(lambda: slow.hits >= 32, timeout_s=60, what="32 slow fetches in flight")
            assert fetching.get("/healthz").status_code == 200
            assert fetching.post("/link", json={"mention": "Plain 1"}).status_code == 200
            replies = [f.result() for f in futures]
        assert {r.status_code for r in replies} == {400}  # each ended by the total deadline, generic message
    finally:
        slow.close()


def test_a_batch_of_slow_urls_fetches_them_at_once(fetching):
    slow = CountingServer(png_bytes(), slow_s=0.5)
    try:
        uri = f"http://127.0.0.1:{slow.port}/slow.png"
        batch = {"mentions": [{"mention": "x", "image": uri} for _ in range(3)]}
        reply = fetching.post("/link/batch", json=batch)
        assert reply.status_code == 400 and reply.json()["field"] == "mentions.0.image", reply.text
        assert slow.hits == 3 and slow.max_in_flight == 3  # one deadline for the batch, not three in a row
    finally:
        slow.close()
