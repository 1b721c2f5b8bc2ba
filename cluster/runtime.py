"""Start or join Ray once per process, quietly, from the `ray:` config section.

Every `mel` subcommand and library entry point calls `init_ray`; a caller that already started Ray (a test
fixture, a notebook) keeps its session, so the same functions run under pytest and from the command line.

The console shows our own progress lines and summaries only: workers' stdout reaches it (a training worker's
`print` is a console line like any other), while their stderr, where Ray's loggers, C++ lines and warnings
write, stays in Ray's log files under the session folder. `mel --verbose` (`MEL_VERBOSE=1`) shows everything.

Token authentication: a local Ray started here keeps Ray's default, token authentication on (the token is
generated into `~/.ray/auth_token`), so no other local user can reach the cluster's ports; we keep it on
deliberately and only silence Ray's notice about it. `RAY_AUTH_MODE=disabled` opts out. Joining a cluster
(`ray.address`) uses the environment's `RAY_AUTH_MODE` / `RAY_AUTH_TOKEN`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERBOSE_ENV = "MEL_VERBOSE"
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.serve", "ray.tune", "ray.util", "ray.air")


def verbose() -> bool:
    """`mel --verbose` (or MEL_VERBOSE=1): Ray's own log lines reach the console too."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_ray_logs() -> None:
    """Keep Ray's Python loggers and deprecation warnings off the console of this process (driver or worker).

    Also Ray's `worker_process_setup_hook`, so every worker, actor and controller of the job starts quiet.
    """
    if verbose():
        return
    existing = [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]
    for name in {*RAY_LOGGERS, *existing}:  # children configured with their own level are quieted too
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        if _errors_only not in logger.filters:  # `serve.start` resets its logger's level, not its filters
            logger.addFilter(_errors_only)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or verbose()


def init_ray(ray_cfg, env: dict[str, str] | None = None) -> None:
    """Reuse a running Ray; else start a local one ("local") or join `ray_cfg.address`.

    `env`: variables that Ray's own processes read when they start (Serve's ingress switches,
    `cluster.serve.ingress`). A local Ray's raylet inherits this process's environment, so they go there
    too; a running Ray keeps the environment it started with."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray_cfg.address == "local":
        os.environ.update(env or {})
    env_vars = {
        **(env or {}),
        "PYTHONPATH": str(REPO),  # workers import our packages even when the repository is not pip-installed
        # Ray Train's print patch tees each progress line to stdout and to its logger: every line showed twice.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        VERBOSE_ENV: "1" if verbose() else "0",
        "PYTHONUNBUFFERED": "1",  # a worker's progress line reaches the console when printed, not at exit
    }
    quiet_ray_logs()
    common = dict(
        namespace=ray_cfg.namespace,
        include_dashboard=False,
        log_to_driver=True,  # workers' own progress lines (training steps, dev metrics) reach the console
        logging_level=logging.INFO if verbose() else logging.ERROR,
        runtime_env={"env_vars": env_vars, "worker_process_setup_hook": "cluster.runtime.quiet_ray_logs"},
    )
    if ray_cfg.address == "local":
        ray.init(
            num_cpus=ray_cfg.num_cpus,
            object_store_memory=ray_cfg.object_store_memory_mb * 1024 * 1024,
            **common,
        )
    else:
        ray.init(address=ray_cfg.address, **common)
    if not verbose():
        _stdout_only_to_console()


def _stdout_only_to_console() -> None:
    """Workers' stdout (our `print`s: training steps, dev metrics) reaches the console; their stderr (Ray's
    loggers, C++ core-worker lines, warnings) and the raylet's lines stay in Ray's log files.

    Swaps Ray's driver-side log printer (the handler `ray.init(log_to_driver=True)` registers on the standard
    stream dispatcher, as Ray Client and notebooks do) for one that filters by stream.
    """
    import sys

    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    def print_stdout(batch: dict) -> None:
        if batch.get("is_err") or batch.get("pid") in ("raylet", "gcs_server", "autoscaler"):
            return
        for line in batch.get("lines", []):
            print(line, file=sys.stdout, flush=True)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", print_stdout)
    _quiet_retried_task_notices()


def _quiet_retried_task_notices() -> None:
    """The driver's error listener prints "Task X failed ... will be retried" notices (e.g. Serve's controller
    shutdown) through `print_to_stdstream`; a retried task is Ray's business, so only those are dropped."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker.print_to_stdstream, "__wrapped__", ray_worker.print_to_stdstream)

    def print_unless_retried(data, ignore_prefix):
        if any("will be retried" in line for line in data.get("lines", [])):
            return
        original(data, ignore_prefix)

    print_unless_retried.__wrapped__ = original
    ray_worker.print_to_stdstream = print_unless_retried


def shutdown_ray() -> None:
    """Stop the Ray session this process started or joined (no-op when none)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
