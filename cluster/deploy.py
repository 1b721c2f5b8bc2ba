"""Deployment files generated from `ray_config.yaml`, so they cannot drift from it.

`python -m cluster.deploy [--config FILE] [--out deploy]` writes (into the top-level `deploy/`):
- `ray-cluster.yaml`  Ray cluster launcher (head + GPU worker group), for `ray up`;
- `raycluster.yaml`   KubeRay RayCluster (head + GPU worker group);
- `rayjob-index.yaml`, `rayjob-train.yaml`  KubeRay RayJobs running `mel index` / `mel train`;
- `rayservice.yaml`   KubeRay RayService whose serveConfigV2 is `mel serve --print-config`'s application;
- `milvus.md`         where Milvus comes from (the official Helm chart / compose file, referenced, not copied).
Entry points are the `mel` console script; the image is any image with this package installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

IMAGE = "ghcr.io/your-org/mel-mmoe:0.1.0"  # build from this repo: pip install . on rayproject/ray:2.60.0-py311-gpu
RAY_VERSION = "2.60.0"


def _serve_env(cfg) -> list[dict]:
    """Serve's ingress switches (`serve.ingress`) on every Ray container: Serve reads them when Ray starts."""
    from cluster.serve.ingress import ingress_env

    return [{"name": k, "value": v} for k, v in ingress_env(cfg.serve, here=False).items()]


def _head_group(cfg) -> dict:
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},  # keep work off the head
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "ray-head",
                        "image": IMAGE,
                        "env": _serve_env(cfg),
                        "resources": {"limits": {"cpu": "4", "memory": "16Gi"}},
                        "ports": [{"containerPort": 6379}, {"containerPort": 8265}, {"containerPort": 8000}],
                    }
                ]
            }
        },
    }


def _gpu_group(cfg, replicas: int) -> dict:
    return {
        "groupName": "gpu-workers",
        "replicas": replicas,
        "minReplicas": 0,
        "maxReplicas": max(replicas, 8),
        "rayStartParams": {},
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "ray-worker",
                        "image": IMAGE,
                        "env": _serve_env(cfg),
                        "resources": {"limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}},
                    }
                ]
            }
        },
    }


def _cluster_spec(cfg) -> dict:
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "headGroupSpec": _head_group(cfg),
        "workerGroupSpecs": [_gpu_group(cfg, max(cfg.train.num_workers, cfg.encoder.num_actors))],
    }


def _mel_command(subcommand: str) -> str:
    # The config travels in the image (or a ConfigMap mounted at /config); storage/milvus point at S3 and a server.
    return f"mel --config /config/ray_config.yaml --set ray.address=auto {subcommand}"


def ray_launcher(cfg) -> dict:
    from cluster.serve.ingress import ingress_env

    # Serve's switches, in the environment of `ray start`
    env = " ".join(f"{k}={v}" for k, v in ingress_env(cfg.serve, here=False).items())
    return {
        "cluster_name": "mel",
        "max_workers": 8,
        "provider": {"type": "aws", "region": cfg.storage.s3_region or "us-east-1"},
        "docker": {"image": IMAGE, "container_name": "ray", "run_options": ["--gpus all"]},
        "available_node_types": {
            "head": {
                "node_config": {"InstanceType": "m6i.2xlarge"},
                "resources": {"CPU": 0},
                "max_workers": 0,
            },
            "gpu_worker": {
                "node_config": {"InstanceType": "g5.2xlarge"},
                "resources": {},
                "min_workers": 0,
                "max_workers": 8,
            },
        },
        "head_node_type": "head",
        "setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            f"{env} ray start --head --port=6379 --dashboard-host=0.0.0.0",
        ],
        "worker_start_ray_commands": ["ray stop", f"{env} ray start --address=$RAY_HEAD_IP:6379"],
    }


def raycluster(cfg) -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "mel"},
        "spec": _cluster_spec(cfg),
    }


def rayjob(cfg, subcommand: str) -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": f"mel-{subcommand}"},
        "spec": {
            "entrypoint": _mel_command(subcommand),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": _cluster_spec(cfg),
        },
    }


def serve_application(cfg) -> dict:
    """The Serve application `mel serve --print-config` also emits (import path + args)."""
    return {
        "name": "mel",
        "route_prefix": "/",
        "import_path": "cluster.serve.app:app_builder",
        "args": {"config_path": "/config/ray_config.yaml"},
    }


def rayservice(cfg) -> dict:
    serve_config = {
        "http_options": {"host": "0.0.0.0", "port": cfg.serve.port},
        "applications": [serve_application(cfg)],
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "mel-serve"},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": _cluster_spec(cfg),
        },
    }


MILVUS_POINTER = """# Milvus for production

Milvus is deployed with its own official artifacts; this repository only points at them.
- Kubernetes: the Milvus Helm chart (`helm repo add milvus https://zilliztech.github.io/milvus-helm/`,
  `helm install mel-milvus milvus/milvus --set cluster.enabled=true`), or the Milvus Operator.
- One host: the official `milvus-standalone-docker-compose.yml` from the Milvus release page.
- Managed: Zilliz Cloud (index type AUTOINDEX).
Then set `milvus.uri: http://<host>:19530` and `milvus.token: <user:password or API key>` in ray_config.yaml.
"""


def render_all(cfg) -> dict[str, str]:
    dump = lambda doc: yaml.safe_dump(doc, sort_keys=False)  # noqa: E731
    return {
        "ray-cluster.yaml": dump(ray_launcher(cfg)),
        "raycluster.yaml": dump(raycluster(cfg)),
        "rayjob-index.yaml": dump(rayjob(cfg, "index")),
        "rayjob-train.yaml": dump(rayjob(cfg, "train")),
        "rayservice.yaml": dump(rayservice(cfg)),
        "milvus.md": MILVUS_POINTER,
    }


def main() -> None:
    from cluster.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "deploy"))
    args = parser.parse_args()
    for name, text in render_all(load_config(args.config)).items():
        (Path(args.out) / name).write_text(text)
        print(f"wrote {Path(args.out) / name}")


if __name__ == "__main__":
    main()
