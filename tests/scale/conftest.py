"""A real two-node Ray cluster on this host: a head and a worker node that declares a custom resource.

Both nodes are `ray start --block` processes in their own process groups, with their own --temp-dir and ports,
so they never touch another Ray session on the machine; the finaliser stops exactly these process groups
(`ray stop` would stop every Ray on the host).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import REPO, free_port

WORKER_RESOURCE = "accelerator"  # the custom resource only the worker node has
NODE_START_WAIT_S = 240.0  # readiness wait for both nodes to register (not an assertion on speed)
# Ray 2.60 turns on token authentication for `ray start` clusters; this throwaway local cluster opts out so that
# `mel` drivers and the state API client connect without a token file.
RAY_AUTH_ENV = {"RAY_AUTH_MODE": "disabled"}
RAY_ENV = {**RAY_AUTH_ENV, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}


@dataclass
class RayCluster:
    address: str  # GCS address for `ray.address` / `ray start --address`
    dashboard_url: str  # the state API (ray.util.state) answers here
    temp_dir: str
    head_node_id: str
    worker_node_id: str
    logs: list[Path]


def _node_ports() -> list[str]:
    """Every port a node opens, picked free, so two clusters on one host cannot collide."""
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, **RAY_ENV}
    env.pop("RAY_ADDRESS", None)
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["ray", "start", "--block", "--disable-usage-stats", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _alive_nodes(dashboard_url: str) -> list[dict]:
    from ray.util.state import list_nodes

    try:
        return [
            n
            for n in list_nodes(address=dashboard_url, detail=True, raise_on_missing_output=False)
            if n.state == "ALIVE"
        ]
    except Exception:  # the dashboard is still starting
        return []


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the node's process group (ray start --block then stops its raylet/GCS); SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def _leftover_pids(marker: str) -> list[int]:
    """Processes of this cluster that escaped their group (their command line names our temp dir or GCS port)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def ray_cluster():
    """Head (1 CPU, dashboard for the state API) + worker node (1 CPU, 1 GPU declared, {"accelerator": 1})."""
    temp_dir = tempfile.mkdtemp(prefix="mr", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    port, dash_port = free_port(), free_port()
    address, dashboard_url = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash_port}"
    logs = [Path(temp_dir) / "head.log", Path(temp_dir) / "worker.log"]
    head = _start_node(
        [
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--num-gpus=0",
            "--object-store-memory=200000000",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}",
            f"--ray-client-server-port={free_port()}",
            *_node_ports(),
        ],
        logs[0],
    )
    procs = [head]
    saved_env = {k: os.environ.get(k) for k in RAY_AUTH_ENV}
    os.environ.update(RAY_AUTH_ENV)  # for the state API client in this process
    try:
        deadline = time.monotonic() + NODE_START_WAIT_S
        while not _alive_nodes(dashboard_url):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray head did not start:\n{logs[0].read_text()[-3000:]}")
            time.sleep(1.0)
        worker = _start_node(
            # num-gpus=1 on a host without GPUs: Ray only schedules by the declared number (a GPU node pool's
            # shape); torch still finds no CUDA device, so the actors run on CPU.
            [
                f"--address={address}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=1",
                "--num-gpus=1",
                f"--resources={json.dumps({WORKER_RESOURCE: 1})}",
                "--object-store-memory=200000000",
                *_node_ports(),
            ],
            logs[1],
        )
        procs.append(worker)
        while len(nodes := _alive_nodes(dashboard_url)) < 2:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray worker node did not join:\n{logs[1].read_text()[-3000:]}")
            time.sleep(1.0)
        by_kind = {WORKER_RESOURCE in n.resources_total: n.node_id for n in nodes}
        yield RayCluster(address, dashboard_url, temp_dir, by_kind[False], by_kind[True], logs)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for marker in (temp_dir, address):
            for pid in _leftover_pids(marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_mel(args: list[str], cwd: Path, timeout_s: float = 900) -> subprocess.CompletedProcess:
    """`mel <args>` in a fresh Python process (exactly what a user runs), output captured."""
    env = {**os.environ, **RAY_ENV}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
