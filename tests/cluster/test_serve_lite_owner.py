"""Who opens a Milvus Lite file when serving: the single layout's one replica (searching it in-process), or
the calling process, whose local gRPC URI replicas then share (`cluster.serve.app.replica_owns_lite`).
`mel serve` on a Lite file with the replica as owner runs end to end in tests/cluster/test_serve_cli.py."""

from __future__ import annotations

from cluster.config import load_config
from cluster.serve.app import _local_lite_server, deployment_options, replica_owns_lite
from workers.config import MilvusConfig
from workers.milvus_store import MilvusStore


def config(tmp_path, *sets):
    return load_config(overrides=[f"storage.root={tmp_path}", f"milvus.uri={tmp_path / 'milvus.db'}", *sets])


def test_the_single_replica_owns_a_file_nobody_here_serves(tmp_path):
    cfg = config(tmp_path)
    assert replica_owns_lite(cfg)
    assert deployment_options(cfg)["LinkServer"]["num_replicas"] == 1  # one owner process


def test_the_split_layout_several_replicas_and_servers_are_shared_from_here(tmp_path):
    assert not replica_owns_lite(config(tmp_path, "serve.layout=split"))
    assert not replica_owns_lite(config(tmp_path, "serve.num_replicas=2", "serve.max_replicas=2"))
    assert not replica_owns_lite(config(tmp_path, "serve.max_replicas=3"))  # autoscaling adds replicas
    assert not replica_owns_lite(config(tmp_path, "milvus.uri=http://milvus.example:19530"))


def test_a_file_this_process_serves_stays_here_for_an_index_job_while_serving(tmp_path):
    cfg = config(tmp_path)
    store = MilvusStore(MilvusConfig(collection="ents"), str(tmp_path / "milvus.db"))  # e.g. `mel index` here
    try:
        assert not replica_owns_lite(cfg)
        shared = _local_lite_server(cfg)
        assert shared.milvus.uri.startswith("http://127.0.0.1:")  # replicas get this process's server
    finally:
        store.close(release_file=True)
    assert replica_owns_lite(cfg)  # released: the replica may open it
