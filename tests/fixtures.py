"""Helpers the tests share (not fixtures pytest injects: those stay in the conftest files).

Import them as `from tests.fixtures import ...`; nothing imports a conftest module.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    check: Callable[[], T], timeout_s: float = 15.0, interval_s: float = 0.25, what: str = ""
) -> T:
    """Poll `check` until it returns something truthy, and return that; fail naming `what` at `timeout_s`.

    For waiting on a cue (an alias swap seen, a port freed, a server up), never for asserting a duration.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what or check!r}")
        time.sleep(interval_s)


def init_test_ray() -> None:
    """The tests' local Ray (2 CPUs, small object store); a no-op when one is running. Serve runs with the
    default `serve.ingress`, as `mel serve` would (its switches are read when Ray starts)."""
    import os

    import ray

    from cluster.config import ServeConfig
    from cluster.serve.ingress import ingress_env

    if ray.is_initialized():
        return
    env = ingress_env(ServeConfig())
    os.environ.update(env)
    for attempt in (1, 2):
        try:
            ray.init(
                num_cpus=2,
                object_store_memory=300 * 1024 * 1024,
                include_dashboard=False,
                log_to_driver=False,
                namespace="mel-tests",
                runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **env}},
            )
            return
        except Exception:
            # a raylet that never registered ("GCS cannot find the node", seen once here): Ray forks its
            # processes from this one, where earlier tests' gRPC threads may run; once more, then fail
            ray.shutdown()
            if attempt == 2:
                raise
