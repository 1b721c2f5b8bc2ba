"""The committed deployment files parse, match the generator, and reference the real entry points."""

from __future__ import annotations

from pathlib import Path

import yaml

from cluster.cli import build_parser
from cluster.config import load_config
from cluster.deploy import render_all

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_committed_manifests_are_generated_from_ray_config():
    for name, text in render_all(load_config()).items():
        assert (DEPLOY / name).read_text() == text, f"{name} is stale: run python -m cluster.deploy"


def test_manifests_parse_and_reference_entry_points():
    docs = {p.name: yaml.safe_load(p.read_text()) for p in DEPLOY.glob("*.yaml")}
    assert docs["raycluster.yaml"]["kind"] == "RayCluster"
    for job, sub in (("rayjob-index.yaml", "index"), ("rayjob-train.yaml", "train")):
        entry = docs[job]["spec"]["entrypoint"]
        assert entry.startswith("mel ") and entry.split()[-1] == sub
        args = build_parser().parse_args(entry.split()[1:])  # the entrypoint is a valid `mel` command line
        assert args.command == sub
    service = yaml.safe_load(docs["rayservice.yaml"]["spec"]["serveConfigV2"])
    module, attr = service["applications"][0]["import_path"].split(":")
    assert module == "cluster.serve.app" and attr == "app_builder"
    workers = docs["raycluster.yaml"]["spec"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    launcher = docs["ray-cluster.yaml"]
    assert launcher["head_node_type"] in launcher["available_node_types"]
    # Serve's ingress switch is in every Ray process's environment from the start (serve.ingress: haproxy)
    for group in [docs["raycluster.yaml"]["spec"]["headGroupSpec"], workers]:
        env = {e["name"]: e["value"] for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = launcher[key][-1]
        assert start.startswith("RAY_SERVE_ENABLE_HA_PROXY=1 ") and " ray start " in start, start
