"""Storage against a real S3 endpoint (moto server) and the local file system: same calls, same results."""

from __future__ import annotations

import pytest

from kb_builder.storage import Storage, is_s3, split_s3


def test_split_and_is_s3():
    assert split_s3("s3://b/a/c.txt") == ("b", "a/c.txt")
    assert is_s3("s3://b") and not is_s3("/tmp/x")
    with pytest.raises(ValueError, match="not an s3"):
        split_s3("/tmp/x")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_roundtrip_list_delete_and_dirs(where, local_storage, request, tmp_path):
    cfg = request.getfixturevalue("s3_storage") if where == "s3" else local_storage
    store = Storage(cfg)
    uri = store.join("a", "b.txt")
    assert not store.exists(uri)
    store.write_bytes(uri, b"hello")
    store.write_bytes(store.join("a", "sub", "c.txt"), b"x")
    assert store.exists(uri) and store.read_bytes(uri) == b"hello"
    store.write_bytes(store.join("a2", "other.txt"), b"y")  # a sibling sharing the name's start
    assert store.list(store.join("a")) == sorted([uri, store.join("a", "sub", "c.txt")])
    assert store.list(uri) == [uri]
    assert store.local_path(uri).read_bytes() == b"hello"

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "x.bin").write_bytes(b"1")
    (src / "d" / "y.bin").write_bytes(b"22")
    assert store.upload_dir(src, store.join("up")) == 2
    assert store.download_dir(store.join("up"), tmp_path / "back") == 2
    assert (tmp_path / "back" / "d" / "y.bin").read_bytes() == b"22"

    store.delete(uri)
    assert not store.exists(uri)
    with pytest.raises(FileNotFoundError):
        store.read_bytes(uri)


def test_s3_staging_is_keyed_by_etag(s3_storage):
    store = Storage(s3_storage)
    uri = store.join("m.bin")
    store.write_bytes(uri, b"v1")
    first = store.local_path(uri)
    assert store.local_path(uri) == first  # staged once
    store.write_bytes(uri, b"v2")
    second = store.local_path(uri)
    assert second != first and second.read_bytes() == b"v2"
    assert store.fingerprint(uri).startswith("etag:")
