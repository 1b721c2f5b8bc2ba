"""The quickstart path end to end: real local Ray, real Milvus Lite, Ray Train, real HTTP to Ray Serve."""

from __future__ import annotations

import re

import pytest

# What Ray's own log lines look like on a console: a worker prefix, a logger record, a Serve record ("INFO <date>
# <time> serve <pid> -- ..."), a C++ record, a warning.
RAY_LOG_LINE = re.compile(
    r"^\((\w+) pid=\d+|\b(INFO|WARNING|WARN)\b \S+\.py:\d+ --|^(INFO|WARNING|DEBUG) \d{4}-\d\d-\d\d .* -- "
    r"|\.cc:\d+:|RayDeprecationWarning|raylet"
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_quickstart_end_to_end(mel_config, capfd):
    """Runs like a user's first run: on a fresh local Ray that the quickstart starts and stops itself (earlier
    tests kill Serve actors in the shared test Ray); the shared Ray is started again afterwards."""
    import ray

    from cluster.quickstart import run_quickstart
    from tests.fixtures import free_port, init_test_ray

    cfg = mel_config
    cfg.serve.port = free_port()  # never collide with a server already on 8000
    ray.shutdown()
    try:
        result = run_quickstart(cfg, n_demo=8)
    finally:
        init_test_ray()

    # every entity of the built KB is in Milvus, exactly once
    assert result.entities == cfg.kb.sample_entities
    assert result.indexed == result.entities

    # metrics are present, in range, and training helped
    for metrics in (result.untrained, result.trained):
        for protocol in ("exhaustive", "system"):
            m = metrics[protocol]
            for key in ("hits@1", "hits@3", "hits@5", "hits@10", "hits@20", "mrr"):
                assert 0.0 <= m[key] <= 1.0, (protocol, key, m[key])
            assert m["hits@1"] <= m["hits@5"] <= m["hits@20"]
    assert result.trained["exhaustive"]["hits@1"] > result.untrained["exhaustive"]["hits@1"] + 0.1

    # mentions were linked over HTTP, and unambiguous ones go to their gold entity
    assert len(result.answers) == 8
    assert f"mel serve --set serve.checkpoint={result.model_dir}" in result.summary()
    assert f"http://{cfg.serve.host}:{cfg.serve.port}/ui/" in result.summary()
    assert all(a["candidates"] and a["candidates"][0]["rank"] == 1 for a in result.answers)
    unambiguous = [a for a in result.answers if not a["ambiguous"]]
    assert len(unambiguous) == 4
    assert sum(a["correct"] for a in unambiguous) >= 3
    assert sum(a["correct"] for a in result.answers) >= 6

    # a quiet console: our progress lines and summaries, no Ray log line (those stay in Ray's log files)
    out, err = capfd.readouterr()
    assert "[train]" in out and "== index" in out
    ray_lines = [line for line in (out + err).splitlines() if RAY_LOG_LINE.search(line)]
    assert not ray_lines, "\n".join(ray_lines[:20])
