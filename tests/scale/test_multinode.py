"""Issue 10: `mel index` and `mel train` on a real two-node Ray cluster, placed on the worker node by config.

Only the worker node declares a GPU and a custom resource ({"accelerator": 1}), as a GPU node pool would; the
jobs ask for them through the config alone (`--set ...`), and the cluster's state API shows on which node every
encoder actor and every Ray Train worker ran.
"""

from __future__ import annotations

import json

import pytest

from tests.scale.helpers import WORKER_RESOURCE, run_mel

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _actor_ids(cluster, class_name: str) -> dict[str, str]:
    """actor id -> node id of every actor of `class_name` the cluster ever ran (alive or dead)."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=cluster.dashboard_url,
        filters=[("class_name", "=", class_name)],
        detail=True,
        limit=1000,
        raise_on_missing_output=False,
    )
    return {a.actor_id: a.node_id for a in actors}


@pytest.fixture(scope="module")
def mel_args(ray_cluster, tmp_path_factory):
    """Common `--set` overrides: join the cluster, a tiny KB under a temp root, one of everything."""
    tmp = tmp_path_factory.mktemp("multinode")
    sets = [
        f"ray.address={ray_cluster.address}",
        f"storage.root={tmp / 'data'}",
        f"storage.cache_dir={tmp / 'cache'}",
        "kb.sample_entities=40",
        "kb.sample_mentions=120",
        "encoder.batch_size=8",
        "encoder.num_actors=1",
        "encoder.num_cpus_per_actor=1",
    ]
    args = [x for s in sets for x in ("--set", s)]
    built = run_mel([*args, "kb", "build"], cwd=tmp)
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = json.loads((tmp / "data" / "kb" / "sample" / "manifest.json").read_text())
    return args, tmp, int(manifest["entities"]["rows"])


def _fail_message(proc, cluster) -> str:
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in cluster.logs if p.exists())
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}\n{logs}"


def _index_on_worker_node(ray_cluster, mel_args, alias: str, placement: list[str]) -> None:
    """`mel index` into a fresh alias with `placement` overrides; every new encoder actor ran on the worker node."""
    args, tmp, entities = mel_args
    before = _actor_ids(ray_cluster, "EncoderWorker")
    proc = run_mel([*args, "--set", f"milvus.collection={alias}", *placement, "index"], cwd=tmp)
    assert proc.returncode == 0, _fail_message(proc, ray_cluster)
    assert f"indexed {entities} entities this run, collection holds {entities}" in proc.stdout
    assert "on CPU" in proc.stdout  # the declared GPU is a scheduling label here; torch sees no CUDA device
    new = {a: n for a, n in _actor_ids(ray_cluster, "EncoderWorker").items() if a not in before}
    assert len(new) == 1  # encoder.num_actors=1, never restarted
    assert set(new.values()) == {ray_cluster.worker_node_id} != {ray_cluster.head_node_id}


def test_index_encoder_actors_follow_num_gpus_per_actor(ray_cluster, mel_args):
    """Only the worker node has a GPU: `encoder.num_gpus_per_actor=1` must put the encoder actor there."""
    _index_on_worker_node(ray_cluster, mel_args, "ents_gpu", ["--set", "encoder.num_gpus_per_actor=1"])


def test_index_encoder_actors_follow_custom_resource(ray_cluster, mel_args):
    _index_on_worker_node(
        ray_cluster, mel_args, "ents_res", ["--set", f"encoder.resources_per_actor={{{WORKER_RESOURCE}: 1}}"]
    )


def test_train_runs_ray_train_workers_on_worker_node(ray_cluster, mel_args):
    args, tmp, _ = mel_args
    before = _actor_ids(ray_cluster, "RayTrainWorker")
    proc = run_mel(
        [
            *args,
            "--set",
            "train.num_workers=1",
            "--set",
            "train.cpus_per_worker=1",
            "--set",
            f"train.resources_per_worker={{{WORKER_RESOURCE}: 1}}",
            "--set",
            "train.epochs=1",
            "--set",
            "train.batch_size=16",
            "--set",
            "train.checkpoint_every_steps=1000",
            "--set",
            "train.run_name=multinode",
            "train",
        ],
        cwd=tmp,
    )
    assert proc.returncode == 0, _fail_message(proc, ray_cluster)
    assert "1 epochs in" in proc.stdout
    assert (tmp / "data" / "runs" / "multinode" / "best" / "model.safetensors").exists()
    new = {a: n for a, n in _actor_ids(ray_cluster, "RayTrainWorker").items() if a not in before}
    assert len(new) == 1  # train.num_workers=1, no failure, so no restarted worker group
    assert set(new.values()) == {ray_cluster.worker_node_id}
