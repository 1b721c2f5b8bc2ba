"""Bad inputs (issue 9, part 2): each gets a clear error naming the item, and no other item is lost.

Covered elsewhere and referenced from docs/reliability.md: config keys/types (tests/cluster/test_config.py),
bad JSONL rows of every kind (tests/kb_builder/test_validate.py), schema/size/base64 errors over HTTP
(tests/cluster/test_api_validation.py). This module adds what those leave out.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from kb_builder.config import StorageConfig
from workers.config import EncoderConfig, MilvusConfig
from workers.images import ImageLoader, load_images


# -- images ---------------------------------------------------------------------------------------------------
def png_bytes(width: int = 8, height: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height pixels, with almost no pixel data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def image_dir(tmp_path) -> Path:
    root = tmp_path / "kb"
    (root / "images").mkdir(parents=True)
    (root / "images" / "good.png").write_bytes(png_bytes())
    (root / "images" / "text.png").write_text("this is a text file posing as a PNG\n")
    (root / "images" / "truncated.png").write_bytes(png_bytes(64, 64)[:60])
    (root / "images" / "empty.png").write_bytes(b"")
    (root / "images" / "bomb30k.png").write_bytes(bomb_png(30_000, 30_000))
    (root / "images" / "bomb8k.png").write_bytes(bomb_png(8_000, 8_000))  # under PIL's limit, over ours (40M)
    (root / "images" / "big.png").write_bytes(png_bytes() + b"\0" * 5_000)
    (root / "images" / "escape.png").symlink_to("/etc/passwd")
    return root


def loader_for(root: Path, tmp_path: Path, **encoder) -> ImageLoader:
    cfg = EncoderConfig(**encoder)
    return ImageLoader(
        cfg, StorageConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")), [str(root)]
    )


BAD_IMAGES = {  # file name -> words the error must contain (besides the uri)
    "text.png": "cannot identify image",
    "truncated.png": "",
    "empty.png": "empty image file",
    "bomb30k.png": "pixels",
    "bomb8k.png": "8000x8000 pixels, over max_image_pixels=40000000",
    "big.png": "over max_image_bytes=4000",
    "escape.png": "outside the KB folder and the allowed image roots",
}


def test_each_bad_image_is_named_and_the_good_one_still_loads(image_dir, tmp_path):
    loader = loader_for(image_dir, tmp_path, max_image_bytes=4000)
    uris = [str(image_dir / "images" / "good.png")] + [str(image_dir / "images" / n) for n in BAD_IMAGES]
    uris += [
        f"{image_dir}/images/../../../etc/passwd",
        "file:///etc/passwd",
        "ftp://example.org/a.png",
        str(image_dir / "images" / "missing.png"),
    ]
    images, errors = load_images(loader, uris)
    assert images[0] is not None and images[0].size == (8, 8)
    assert all(img is None for img in images[1:]) and len(errors) == len(uris) - 1
    for uri, error in zip(uris[1:], errors):
        assert error.startswith(f"{uri}: "), error  # every message names its uri
    for name, words in BAD_IMAGES.items():
        (error,) = [e for e in errors if e.startswith(str(image_dir / "images" / name) + ":")]
        assert words in error, error
    assert "'..' in image path is not allowed" in errors[-4]
    assert "outside the KB folder and the allowed image roots" in errors[-3]
    assert "unsupported image URI scheme 'ftp'" in errors[-2]
    assert "no such image file" in errors[-1]


def test_bad_images_leave_every_entity_encoded_text_only(image_dir, tmp_path):
    """Through the real encoder: bad images never drop a row; each is counted and named, encoded text-only."""
    from mmoe.config import MMoEConfig, TinyCLIPConfig
    from mmoe.pretrained import build_tiny_model, save_pretrained
    from workers.encoder import EntityEncoder

    model, processor = build_tiny_model(
        TinyCLIPConfig(), MMoEConfig(text_max_tokens=17), ["river town bridge"], seed=0
    )
    save_pretrained(tmp_path / "model", model, processor)
    loader = loader_for(image_dir, tmp_path, max_image_bytes=4000)
    names = ["good.png", *BAD_IMAGES]
    rows = [
        {
            "entity_id": f"E{i}",
            "name": f"river {i}",
            "description": "a town",
            "image_uris": [str(image_dir / "images" / n)],
        }
        for i, n in enumerate(names)
    ]
    enc = EntityEncoder(tmp_path / "model", EncoderConfig(batch_size=4), device="cpu", loader=loader)
    out = enc.encode_entities(rows)
    assert out.ids == [r["entity_id"] for r in rows] and not out.failed
    assert out.has_image.tolist() == [True] + [False] * len(BAD_IMAGES)
    assert sorted(e.split(":")[0] for e in out.image_errors) == sorted(
        f"entity E{i}" for i in range(1, len(names))
    )
    assert np.isfinite(out.vectors).all()


# -- Milvus: wrong vector dimensions ----------------------------------------------------------------------------
def test_wrong_dimension_rows_are_refused_naming_the_entity_and_nothing_is_half_written(tmp_path):
    from workers.milvus_store import DimensionMismatchError, MilvusStore

    store = MilvusStore(MilvusConfig(collection="dims"), str(tmp_path / "milvus.db"))
    try:
        store.create("dims_v1", 8)
        good = [
            {"entity_id": f"G{i}", "vector": np.ones(8, np.float32) * i, "name": f"g{i}"} for i in range(5)
        ]
        store.upsert("dims_v1", good)
        store.flush("dims_v1")
        mixed = [
            {"entity_id": "N1", "vector": np.ones(8, np.float32)},
            {"entity_id": "BAD7", "vector": np.ones(7)},
        ]
        with pytest.raises(
            DimensionMismatchError, match=r"entity 'BAD7': vector has 7 dims, collection 'dims_v1' has 8"
        ):
            store.upsert("dims_v1", mixed)
        with pytest.raises(ValueError, match=r"entity 'NAN1': vector has NaN/inf"):
            store.upsert("dims_v1", [{"entity_id": "NAN1", "vector": np.full(8, np.nan, np.float32)}])
        assert store.count("dims_v1") == 5  # the refused batches wrote nothing; the earlier rows are intact
        with pytest.raises(DimensionMismatchError, match="stores 8-d vectors but the model produces 16-d"):
            store.create("dims_v1", 16)
        with pytest.raises(DimensionMismatchError, match="stores 8-d vectors but the model produces 4-d"):
            store.search(np.ones((1, 4), np.float32), 3, collection="dims_v1")
        assert [h.entity_id for h in store.search(np.ones(8, np.float32), 1, collection="dims_v1")[0]] == [
            "G4"
        ]
    finally:
        store.close(release_file=True)


# -- config -----------------------------------------------------------------------------------------------------
def test_config_file_with_unknown_keys_or_wrong_types_names_key_and_file(tmp_path):
    """(Overrides are covered key by key in tests/cluster/test_config.py; this is the file path.)"""
    from cluster.config import ConfigError, load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder:\n  tiny:\n    hiden_size: 64\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'encoder\.tiny\.hiden_size'"):
        load_config(bad)
    bad.write_text("milvus:\n  index_params: {nlist: many}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: 'milvus\.index_params\.nlist' must be int"):
        load_config(bad)


# -- KB rows in the wrong encoding ------------------------------------------------------------------------------
def test_latin1_rows_are_rejected_by_line_and_the_utf8_rows_kept(tmp_path):
    from kb_builder.build import build_kb
    from kb_builder.config import KBConfig
    from kb_builder.shards import read_entities
    from kb_builder.storage import Storage

    jsonl = tmp_path / "e.jsonl"
    lines = [
        json.dumps({"id": f"J{i}", "name": f"Zurich {i}"}, ensure_ascii=False).encode() for i in range(4)
    ]
    lines.insert(2, '{"id": "JL", "name": "Zürich"}'.encode("latin-1"))  # line 3: latin-1 bytes
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    csv = tmp_path / "e.csv"
    csv.write_bytes("id,name\nC1,Zürich\n".encode() + "C2,Zürich\n".encode("latin-1") + b"C3,Geneva\n")
    storage = StorageConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    report = build_kb(
        KBConfig(name="enc", sample=False, entity_inputs=[str(jsonl), str(csv)]), storage, progress=False
    )
    assert (report.entities, report.rejected) == (6, 2)
    rejects = [
        json.loads(x)
        for x in Storage(storage).read_bytes(f"{storage.root}/kb/enc/rejects.jsonl").splitlines()
    ]
    got = {r["location"]: r["reason"] for r in rejects}
    assert got[f"{jsonl}:line 3"].startswith("non-UTF-8 bytes")
    assert got[f"{csv}:row 2"] == "non-UTF-8 text in name"
    kept = read_entities(Storage(storage), "enc")
    assert sorted(kept["entity_id"].to_list()) == ["C1", "C3", "J0", "J1", "J2", "J3"]
    assert kept.filter(kept["entity_id"] == "C1")["name"][0] == "Zürich"


# -- model checkpoints: safetensors only, never pickles -----------------------------------------------------------
class _Payload:
    """Unpickling this writes a file: proof that a pickle was (or was not) executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle code ran"))


def test_a_pickle_only_checkpoint_is_refused_and_never_unpickled(tmp_path):
    from mmoe.config import MMoEConfig, TinyCLIPConfig
    from mmoe.pretrained import build_tiny_model, load_pretrained, save_pretrained
    from workers.encoder import EntityEncoder
    from workers.model_store import resolve_model_dir

    model, processor = build_tiny_model(
        TinyCLIPConfig(), MMoEConfig(text_max_tokens=17), ["a corpus"], seed=0
    )
    folder = tmp_path / "ckpt"
    save_pretrained(folder, model, processor)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(
        ValueError, match=r"holds only pickle weights \(pytorch_model\.bin\).*never unpickles"
    ):
        load_pretrained(folder)
    cfg = StorageConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    from cluster.config import load_config

    mel = load_config(overrides=[f"storage.root={tmp_path / 'data'}"])
    model_dir = resolve_model_dir(cfg, mel.kb, mel.encoder, mel.mmoe, checkpoint=str(folder))
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        EntityEncoder(model_dir, mel.encoder, device="cpu")
    assert not marker.exists()


def test_a_pickled_train_state_is_refused_by_weights_only_loading(tmp_path):
    """Checkpoints' optimiser state is torch.load(weights_only=True): a crafted pickle is refused, not run."""
    from pickle import UnpicklingError

    import torch

    from cluster.train.checkpoint import STATE_FILE

    marker = tmp_path / "PWNED"
    torch.save({"optimizer": _Payload(marker)}, tmp_path / STATE_FILE)
    with pytest.raises(UnpicklingError, match="Weights only load failed"):
        torch.load(tmp_path / STATE_FILE, map_location="cpu", weights_only=True)
    assert not marker.exists()


# -- HTTP: malformed requests the serving tests do not cover ---------------------------------------------------
def check_error(reply, status: int, field: str | None, text: str = "") -> dict:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["field"] == field, body
    assert text.lower() in body["error"].lower(), body
    assert "Traceback" not in reply.text
    return body


@pytest.fixture(scope="module")
def http(fault_app):
    cfg, url, entities = fault_app
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client


def test_request_bodies_of_the_wrong_json_shape(http):
    check_error(http.post("/link", json=["Damoza"]), 422, "body")
    check_error(
        http.post("/link", content=b"null", headers={"content-type": "application/json"}), 422, "body"
    )
    check_error(http.post("/link/batch", json={"mentions": {"mention": "x"}}), 422, "mentions", "list")
    check_error(http.post("/link/batch", json={"mentions": ["x"]}), 422, "mentions.0")
    check_error(
        http.post("/link", json={"mention": "x", "filters": {"entity_ids": "E1"}}),
        422,
        "filters.entity_ids",
        "list",
    )
    deep = '{"mention": "x", "filters": ' + '{"name": ' * 200 + '"a"' + "}" * 200 + "}"
    check_error(
        http.post("/link", content=deep.encode(), headers={"content-type": "application/json"}),
        422,
        "filters.name",
        "string",
    )


def chunked_oversized_body():
    yield b'{"mention": "x", "context": "'
    for _ in range(30):
        yield b"c" * 10_000  # 300 kB > max_body_bytes (200 kB), sent chunked: no Content-Length to check
    yield b'"}'


def test_oversized_streamed_body_without_content_length_is_refused(http):
    reply = http.post("/link", content=chunked_oversized_body(), headers={"content-type": "application/json"})
    assert 400 <= reply.status_code < 500 and "Traceback" not in reply.text
    assert http.post("/link", json={"mention": "ok"}).status_code == 200


def test_oversized_streamed_body_is_a_413_naming_max_body_bytes(http):
    reply = http.post("/link", content=chunked_oversized_body(), headers={"content-type": "application/json"})
    assert reply.status_code == 413 and "max_body_bytes (200000)" in reply.json()["error"], reply.text
    assert reply.json()["field"] == "body" and reply.json()["request_id"]
    assert http.post("/link", json={"mention": "ok"}).status_code == 200  # the app is unharmed


def test_a_body_that_is_not_utf8_gets_the_standard_error_body(http):
    reply = http.post(
        "/link", content=b'{"mention": "caf\xe9"}', headers={"content-type": "application/json"}
    )
    assert 400 <= reply.status_code < 500
    body = reply.json()
    assert body["field"] == "body" and body["request_id"] and "UTF-8" in body["error"], body


def test_unknown_routes_and_methods_get_the_standard_error_body(http):
    missing = http.get("/no/such/route")
    assert (
        missing.status_code == 404 and missing.json()["error"] == "Not Found" and missing.json()["request_id"]
    )
    wrong = http.get("/link")
    assert wrong.status_code == 405 and wrong.json()["request_id"] and "POST" in wrong.headers["allow"]


def test_bad_image_payloads_over_http_name_the_field(http, fault_app):
    cfg, _, _ = fault_app
    bad_data_url = "data:image/png;base64,%%%"
    check_error(http.post("/link", json={"mention": "x", "image": bad_data_url}), 400, "image", "base64")
    bomb = base64.b64encode(bomb_png(30_000, 30_000)).decode()
    reply = http.post("/link", json={"mention": "x", "image": bomb})
    assert reply.status_code in (400, 413) and reply.json()["field"] == "image", reply.text
    text_png = base64.b64encode(b"not an image at all, just text").decode()
    check_error(http.post("/link", json={"mention": "x", "image": text_png}), 400, "image", "decodable")
    for uri in ("file:///etc/passwd", f"{cfg.storage.root}/../../etc/passwd.png"):
        body = check_error(http.post("/link", json={"mention": "x", "image": uri}), 400, "image")
        assert body["error"] == "image: cannot load an image from this URI or path"  # no roots, no paths
    batch = {"mentions": [{"mention": "ok"}, {"mention": "x", "image": bomb}]}
    reply = http.post("/link/batch", json=batch)
    assert reply.status_code in (400, 413) and reply.json()["field"] == "mentions.1.image", reply.text
    assert http.post("/link", json={"mention": "ok"}).status_code == 200  # the replicas are unharmed
