"""The index/model guard on collection names (cluster/serve/guard.py)."""

from __future__ import annotations

from cluster.serve.guard import index_model_mismatch
from workers.collections import eval_collection, index_collection, indexed_by


def test_only_a_collection_tagged_with_another_model_is_refused():
    mine = index_collection("mel_entities", "0ee0fd9ece95aa", "ef253f84")  # what `mel index` names it
    theirs = index_collection("mel_entities", "0ee0fd9ece95", "0badc0de")
    assert index_model_mismatch(mine, "ef253f84") is None
    reason = index_model_mismatch(theirs, "ef253f84")
    assert reason is not None and theirs in reason and "0badc0de" in reason and "mel index" in reason
    for untagged in ("mel_entities_v1", "hand_made", None):  # not named by `mel index`: trusted
        assert index_model_mismatch(untagged, "ef253f84") is None


def test_collection_names_carry_the_model_tag_for_index_and_eval():
    assert (
        index_collection("mel_entities", "0ee0fd9ece95aa", "ef253f84")
        == "mel_entities_v0ee0fd9ece95_ef253f84"
    )
    assert indexed_by(index_collection("a", "0ee0fd9ece95", "ef253f84")) == "ef253f84"
    assert indexed_by(eval_collection("a", "0ee0fd9ece95", "ef253f84")) == "ef253f84"
    assert eval_collection("a", "0ee0fd9ece95", "ef253f84") != index_collection(
        "a", "0ee0fd9ece95", "ef253f84"
    )
