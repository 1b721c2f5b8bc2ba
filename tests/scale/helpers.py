"""What the scale tests share: `mel` in a fresh process with the throwaway cluster's environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures import REPO

WORKER_RESOURCE = "accelerator"  # the custom resource only the worker node has
# Ray 2.60 turns on token authentication for `ray start` clusters; this throwaway local cluster opts out so that
# `mel` drivers and the state API client connect without a token file.
RAY_AUTH_ENV = {"RAY_AUTH_MODE": "disabled"}
RAY_ENV = {**RAY_AUTH_ENV, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}


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
