"""Candidates: case-insensitive name/alias matches plus ANN hits from a real Milvus Lite file, unique and capped."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cluster.config import DMEConfig, DMELLMConfig
from cluster.dme.candidates import CandidateFinder, NameIndex, milvus_ann
from cluster.dme.enhance import enhance_mention
from cluster.dme.factory import make_selector
from tests.cluster.dme_fake_llm import FakeLLM, Reply

ENTITIES = pl.DataFrame(
    {
        "entity_id": ["E1", "E2", "E3", "E4", "E5"],
        "name": ["Mercury", "Mercury", "Quicksilver", "Hermes", "Venus"],
        "aliases": [["Planet Mercury"], [], ["mercury"], ["Mercury God"], None],
        "description": ["the smallest planet", "a band", "a liquid metal", "a Greek god", "a planet"],
    }
)
# One-hot vectors: a query along axis i finds entity i first.
VECTORS = np.eye(5, dtype=np.float32)


@pytest.fixture
def ann(tmp_path):
    from workers.config import MilvusConfig
    from workers.milvus_store import MilvusStore

    store = MilvusStore(MilvusConfig(collection="dme_test"), str(tmp_path / "milvus.db"))
    store.create("dme_test_v1", 5)
    store.upsert(
        "dme_test_v1",
        [
            {"entity_id": eid, "vector": vec, "name": name, "has_image": False, "content_hash": ""}
            for eid, vec, name in zip(ENTITIES["entity_id"], VECTORS, ENTITIES["name"])
        ],
    )
    store.flush("dme_test_v1")
    store.swap_alias("dme_test_v1")
    yield milvus_ann(store)
    store.close(release_file=True)


def test_name_index_matches_names_and_aliases_case_insensitively():
    index = NameIndex(ENTITIES)
    assert index.match("MERCURY") == ["E1", "E2", "E3"]  # two names and one alias, in table order
    assert index.match("  mercury   god ") == ["E4"]
    assert index.match("planet mercury") == ["E1"]
    assert index.match("Mars") == []
    assert index.candidate("E3").description == "a liquid metal"


def test_finder_adds_ann_hits_after_name_matches_deduplicated_and_capped(ann):
    finder = CandidateFinder(NameIndex(ENTITIES), top_n=2, max_candidates=4, ann_search=ann)
    queries = np.stack(
        [VECTORS[4] + 0.5 * VECTORS[0], VECTORS[3] + 0.5 * VECTORS[1]]
    )  # Venus, then E1 / Hermes, E2
    venus, hermes = finder.find(["Mercury", "Hermes"], queries)
    assert [c.entity_id for c in venus] == ["E1", "E2", "E3", "E5"]  # E1 deduplicated, capped at 4
    assert [c.entity_id for c in hermes] == ["E4", "E2"]
    names_only = CandidateFinder(NameIndex(ENTITIES), top_n=2, max_candidates=2).find(
        ["mercury"], queries[:1]
    )
    assert [c.entity_id for c in names_only[0]] == ["E1", "E2"]


def test_request_dme_enhances_one_mention_through_the_llm():
    finder = CandidateFinder(NameIndex(ENTITIES), top_n=0, max_candidates=10)
    with FakeLLM({"Mercury": [Reply("3")], "Mars": [Reply("1")]}) as llm:
        selector = make_selector(DMEConfig(selector="llm", fallback="none", llm=DMELLMConfig(url=llm.url)))

        def enhance(mention: str, context: str) -> str:
            return enhance_mention(mention, context, finder.find([mention])[0], selector, budget_ms=10_000.0)

        assert enhance("Mercury", "a drop of mercury on the table") == "a liquid metal"
        assert enhance("Mars", "the red planet") == ""  # no candidates: nothing asked
        assert llm.calls == {"Mercury": 1}
    assert selector.counters.selected == 1 and selector.counters.no_candidates == 1
