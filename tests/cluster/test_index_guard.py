"""The index/model guard on collection names (cluster/index_guard.py)."""

from __future__ import annotations

from cluster.index_guard import index_model_mismatch
from workers.milvus_store import versioned_name


def test_only_a_collection_tagged_with_another_model_is_refused():
    mine = versioned_name("mel_entities", "0ee0fd9ece95_ef253f84")  # what `mel index` names it
    theirs = versioned_name("mel_entities", "0ee0fd9ece95_0badc0de")
    assert index_model_mismatch(mine, "ef253f84") is None
    reason = index_model_mismatch(theirs, "ef253f84")
    assert reason is not None and theirs in reason and "0badc0de" in reason and "mel index" in reason
    for untagged in ("mel_entities_v1", "hand_made", None):  # not named by `mel index`: trusted
        assert index_model_mismatch(untagged, "ef253f84") is None
