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
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import free_port, wait_until
from tests.scale.helpers import RAY_AUTH_ENV, RAY_ENV, WORKER_RESOURCE

NODE_START_WAIT_S = 240.0  # readiness wait for both nodes to register (not an assertion on speed)


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


def _wait_for_nodes(count: int, proc: subprocess.Popen, log: Path, dashboard_url: str) -> list:
    """The alive nodes once `count` have registered; fails with the node's log if its process died."""

    def alive():
        if proc.poll() is not None:
            raise RuntimeError(f"Ray node exited before registering:\n{log.read_text()[-3000:]}")
        nodes = _alive_nodes(dashboard_url)
        return nodes if len(nodes) >= count else None

    return wait_until(
        alive, timeout_s=NODE_START_WAIT_S, interval_s=1.0, what=f"{count} Ray nodes (log: {log})"
    )


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
        _wait_for_nodes(1, head, logs[0], dashboard_url)
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
        nodes = _wait_for_nodes(2, worker, logs[1], dashboard_url)
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
