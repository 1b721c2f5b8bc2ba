"""The soak runs only when asked for (`make soak` = `pytest -m soak`); a plain `pytest` skips it."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    if "soak" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: run with `make soak` (pytest -m soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
