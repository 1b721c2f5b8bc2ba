"""Start or join Ray once per process, quietly, from the `ray:` config section.

Every `mel` subcommand and library entry point calls `init_ray`; a caller that already started Ray (a test
fixture, a notebook) keeps its session, so the same functions run under pytest and from the command line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def init_ray(ray_cfg) -> None:
    """Reuse a running Ray; else start a local one ("local") or join `ray_cfg.address`."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common = dict(
        namespace=ray_cfg.namespace,
        include_dashboard=False,
        log_to_driver=True,  # training workers print progress lines (step, samples/s, ETA)
        logging_level=logging.WARNING,
        # Ray workers import our packages from the repository even when it is not pip-installed. Ray Train's
        # print patch tees each progress line to stdout and to its logger: the driver showed every line twice.
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
    )
    if ray_cfg.address == "local":
        ray.init(
            num_cpus=ray_cfg.num_cpus,
            object_store_memory=ray_cfg.object_store_memory_mb * 1024 * 1024,
            **common,
        )
    else:
        ray.init(address=ray_cfg.address, **common)


def shutdown_ray() -> None:
    """Stop the Ray session this process started or joined (no-op when none)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
