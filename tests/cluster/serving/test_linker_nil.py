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


def _answer(best_score: float, threshold, calibration=None, top_k: int = 1):
    enc = EncodedMention(features=None, vector=np.zeros(4, "f4"), gates=None, ms=1.0)
    ret = Retrieved("c", ["E1", "E2"], ["a", "b"], ["da", "db"], np.zeros((2, 4), "f4"), 2.0)
    ranked = {"order": [1, 0], "scores": [best_score, best_score - 1], "units": [[0, 0, 0]] * 2, "ms": 3.0}
    return assemble(MentionQuery("m", top_k=top_k), enc, ret, ranked, threshold, calibration)


def test_threshold_from_config_then_calibration_file(tmp_path):
    assert nil_threshold(ServeConfig(), tmp_path) is None  # never NIL
    (tmp_path / "calibration.json").write_text(json.dumps({"nil_threshold": 41.5, "method": "dev"}))
    assert nil_threshold(ServeConfig(), tmp_path) is None  # a raw-score threshold from before is ignored
    calibrated = {"nil_threshold": 0.4, "nil_threshold_unit": "confidence", "temperature": 2.0}
    (tmp_path / "calibration.json").write_text(json.dumps(calibrated))
    assert nil_threshold(ServeConfig(), tmp_path) == 0.4
    assert nil_threshold(ServeConfig(nil_threshold=0.25), tmp_path) == 0.25  # config wins


def test_confidence_is_the_calibrated_softmax_and_nil_is_decided_on_it():
    """Scores [50, 49]. Plain softmax: e/(1+e) = .731059, 1/(1+e) = .268941. With T = 2 and a NIL logit of 25:
    logits [25, 24.5, 25] -> [1, e^-.5, 1] / (2 + e^-.5) = .383652, .232697 (NIL takes the rest)."""
    plain = _answer(50.0, None, top_k=2)
    assert [c["confidence"] for c in plain["candidates"]] == [0.731059, 0.268941]
    assert [c["score"] for c in plain["candidates"]] == [50.0, 49.0]  # the raw score stays
    calibration = {"temperature": 2.0, "nil_logit": 25.0, "candidates_k": 2}
    cal = _answer(50.0, 0.5, calibration, top_k=2)
    assert [c["confidence"] for c in cal["candidates"]] == [0.383652, 0.232697]
    assert cal["nil"] is True and cal["nil_threshold"] == 0.5  # .384 < .5
    assert cal["candidates"][0]["entity_id"] == "E2"  # candidates are still returned
    assert _answer(50.0, 0.3, calibration)["nil"] is False
    one = _answer(50.0, 0.5, calibration, top_k=1)  # asking for fewer candidates keeps the confidences
    assert [c["confidence"] for c in one["candidates"]] == [0.383652] and [
        c["rank"] for c in one["candidates"]
    ] == [1]


def test_partition_filter_is_a_quoted_equality_on_the_partition_key():
    assert filter_expression(Filters(partition="person")) == 'partition == "person"'
    expr = filter_expression(Filters(has_image=False, partition='x" or "1"=="1'))
    assert expr.startswith('has_image == false and partition == "x\\')  # the quote is escaped


def test_filter_expressions_quote_user_strings():
    assert filter_expression(None) == ""
    assert filter_expression(Filters(has_image=True)) == "has_image == true"
    expr = filter_expression(Filters(name='a" or "1"=="1', entity_ids=["E1"]))
    assert expr == 'name == "a\\" or \\"1\\"==\\"1" and entity_id in ["E1"]'
