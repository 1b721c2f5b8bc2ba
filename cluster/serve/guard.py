"""Which model indexed a collection: serving refuses a collection filled by another model than the served one.

`mel index` names each collection after the model that fills it (`workers.collections`). Entity vectors in Milvus
and the cached entity-side features come from that model; served with another one (e.g. `mel train` after
`mel index`, without re-indexing) every score would be meaningless, so readiness fails and /link answers 503
naming the fix. Light on purpose: cluster/serve/http.py imports it without torch.
"""

from __future__ import annotations

from workers.collections import indexed_by


class IndexModelMismatch(RuntimeError):
    """The collection behind the alias holds another model's vectors: answering would rank nonsense."""


def ensure_indexed_by(collection: str | None, tag: str) -> None:
    """Raise `IndexModelMismatch` unless `collection` may serve the model tagged `tag` (before reranking)."""
    if reason := index_model_mismatch(collection, tag):
        raise IndexModelMismatch(reason)


def guard_readiness(ready: bool, detail: dict, tag: str) -> tuple[bool, dict]:
    """A retriever's (ready, detail), made not ready, with the reason, when its collection is another model's."""
    if reason := index_model_mismatch(detail.get("collection"), tag):
        return False, {**detail, "reason": reason}
    return ready, detail


def index_model_mismatch(collection: str | None, tag: str) -> str | None:
    """Why `collection` cannot serve the model tagged `tag` ("" = unchecked), else None.

    Entity vectors and cached entity features come from the model that indexed them; served with another model
    (e.g. `mel train` after `mel index`, without re-indexing) the scores are meaningless, so serving refuses.
    Collections not named by `mel index` (hand-made, tests) carry no tag and are trusted.
    """
    other = indexed_by(collection)
    if not tag or other is None or other == tag:
        return None
    return (
        f"collection {collection!r} was indexed by another model ({other}) than the one served "
        f"({tag}): run `mel index` with the served model, or serve the model that indexed it (serve.checkpoint)"
    )
