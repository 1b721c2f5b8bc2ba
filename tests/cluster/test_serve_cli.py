"""`mel serve` as a user runs it (issue 7, item 4): a foreground process on its own local Ray that answers
linking over HTTP and, on Ctrl-C (SIGINT), shuts Serve down, exits 0, frees its port and leaves the Milvus Lite
file whole and reopenable."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cluster.serve.client import wait_ready
from tests.cluster.serving.helpers import index_collection, swap_alias
from tests.fixtures import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("ingress", ["haproxy", "proxy"])
def test_mel_serve_links_then_stops_cleanly_on_ctrl_c(tmp_path, ingress):
    from milvus_lite.server_manager import server_manager_instance

    from cluster.artifacts import serving_model_dir
    from cluster.config import load_config
    from kb_builder.build import build_kb
    from kb_builder.shards import read_entities
    from kb_builder.storage import Storage
    from workers.milvus_store import MilvusStore

    port = free_port()
    sets = [
        f"storage.root={tmp_path / 'data'}",
        f"storage.cache_dir={tmp_path / 'cache'}",
        "kb.sample_entities=60",
        "kb.sample_mentions=60",
        f"serve.port={port}",
        "serve.num_cpus_per_replica=0.1",
        "ray.num_cpus=2",
        f"serve.ingress={ingress}",
    ]
    cfg = load_config(overrides=sets)
    build_kb(cfg.kb, cfg.storage, progress=False)
    lite_file = str(tmp_path / "data" / "milvus.db")
    cfg.milvus.uri = server_manager_instance.start_and_get_uri(lite_file)
    entities = read_entities(
        Storage(cfg.storage), cfg.kb.name, columns=["entity_id", "name", "description", "image_uris"]
    ).to_dicts()
    collection = index_collection(cfg, serving_model_dir(cfg), f"{cfg.milvus.collection}_v1", entities)
    swap_alias(cfg, collection)
    # `mel serve` opens the file itself, as after `mel index`
    server_manager_instance.release_server(lite_file)

    argv = [sys.executable, "-m", "cluster.cli", *(a for s in sets for a in ("--set", s)), "serve"]
    log = (tmp_path / "serve.log").open("w+")
    child = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGINT reaches it as Ctrl-C would, not pytest
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # starting a local Ray and four deployments: minutes on a loaded 2-core host
        status = wait_ready(url, attempts=600, give_up=lambda: child.poll() is not None)
        assert child.poll() is None, f"mel serve exited early:\n{Path(log.name).read_text()[-3000:]}"
        assert status == 200
        assert httpx.get(f"{url}/readyz", timeout=60).json()["ingress"] == ingress  # the Ray it started
        gold = entities[0]
        reply = httpx.post(f"{url}/link", json={"mention": gold["name"], "top_k": 5}, timeout=60)
        assert reply.status_code == 200 and len(reply.json()["candidates"]) == 5
        assert httpx.get(f"{url}/ui/", timeout=60).status_code == 200  # the playground it printed

        child.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        rc = child.wait(timeout=180)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
    output = Path(log.name).read_text()
    assert rc == 0, output[-3000:]
    assert "serving at" in output and "shutting down Serve" in output
    assert f"playground: open {url}/ui/" in output
    assert "Traceback" not in output, output[-3000:]
    assert "serve.ingress is" not in output  # no warning that Serve runs another ingress
    try:  # Ray's own processes (raylet, GCS) follow the driver out
        wait_until(lambda: not _group_alive(child.pid) and _port_is_free(port), timeout_s=60, interval_s=1.0)
    except AssertionError:
        pass  # the two asserts below say which one is left
    assert _port_is_free(port), "the HTTP port is still taken after mel serve exited"
    assert not _group_alive(child.pid), "processes of mel serve outlived it"
    store = MilvusStore(cfg.milvus, lite_file)  # the file lock is free and the index is whole
    try:
        assert store.count(cfg.milvus.collection) == len(entities) == 60
    finally:
        store.close(release_file=True)
