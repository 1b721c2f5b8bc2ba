"""NIL decisions and Milvus filter expressions of the in-process pipeline (no Ray, no model)."""

from __future__ import annotations

import json

import numpy as np

from cluster.config import ServeConfig
from cluster.serve.pipeline import (
    EncodedMention,
    MentionQuery,
    Retrieved,
    assemble,
    filter_expression,
    nil_threshold,
)
from cluster.serve.schemas import Filters


def _answer(best_score: float, threshold):
    enc = EncodedMention(features=None, vector=np.zeros(4, "f4"), gates=None, ms=1.0)
    ret = Retrieved("c", ["E1", "E2"], ["a", "b"], ["da", "db"], np.zeros((2, 4), "f4"), 2.0)
    ranked = {"order": [1, 0], "scores": [best_score, best_score - 1], "units": [[0, 0, 0]] * 2, "ms": 3.0}
    return assemble(MentionQuery("m", top_k=1), enc, ret, ranked, threshold)


def test_threshold_from_config_then_calibration_file(tmp_path):
    assert nil_threshold(ServeConfig(), tmp_path) is None  # never NIL
    (tmp_path / "calibration.json").write_text(json.dumps({"nil_threshold": 1.5, "method": "dev"}))
    assert nil_threshold(ServeConfig(), tmp_path) == 1.5
    assert nil_threshold(ServeConfig(nil_threshold=0.25), tmp_path) == 0.25  # config wins


def test_nil_when_best_score_is_under_the_threshold():
    assert _answer(2.0, None)["nil"] is False
    assert _answer(2.0, 1.5)["nil"] is False
    low = _answer(1.0, 1.5)
    assert low["nil"] is True and low["candidates"][0]["entity_id"] == "E2"  # candidates are still returned
    assert [c["rank"] for c in low["candidates"]] == [1]


def test_partition_filter_is_a_quoted_equality_on_the_partition_key():
    assert filter_expression(Filters(partition="person")) == 'partition == "person"'
    expr = filter_expression(Filters(has_image=False, partition='x" or "1"=="1'))
    assert expr.startswith('has_image == false and partition == "x\\')  # the quote is escaped


def test_filter_expressions_quote_user_strings():
    assert filter_expression(None) == ""
    assert filter_expression(Filters(has_image=True)) == "has_image == true"
    expr = filter_expression(Filters(name='a" or "1"=="1', entity_ids=["E1"]))
    assert expr == 'name == "a\\" or \\"1\\"==\\"1" and entity_id in ["E1"]'
