"""The linking pipeline as plain classes: encode mention -> ANN retrieve -> exact rerank -> calibrated NIL.

Reference section 2: the MMoE score splits into an inner product <u_m, u_e>/6, searched in Milvus, plus g2l
attention terms computed from cached entity-side features, so reranking the K retrieved candidates gives the
same scores as exhaustive scoring for those K. `MentionEncoder`, `Retriever` and `Reranker` are what the Ray
Serve deployments wrap (cluster/serve/app.py); `Linker` composes them in-process for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cluster.artifacts import nil_threshold, read_calibration, serving_model_dir
from cluster.serve.guard import ensure_indexed_by, guard_readiness
from mmoe.model import map_tensors, tensor_leaves, to_float32
from workers.collections import model_tag
from workers.device import pick_device

log = logging.getLogger("mel.linker")
ALIAS_REFRESH_S = 1.0  # how stale the alias -> collection resolution may be; a swap is seen within this


@dataclass
class EncodedMention:
    """One mention after the encoder: its MMoE features (batch of 1), u_m, and the gate summary if asked."""

    features: Any  # mmoe SideFeatures with a leading batch dimension of 1
    vector: np.ndarray  # [D] float32 retrieval vector u_m
    gates: dict[str, list[float]] | None
    ms: float
    dme_ms: float = 0.0  # per-request DME (within encode's ms); 0 when the model was trained without DME
    dme_reason: str = ""  # how DME went ("selected", "no_candidates", "fallback:<why>"...); "" when off


@dataclass
class Retrieved:
    """One mention's ANN candidates from one collection, in Milvus order."""

    collection: str
    ids: list[str]
    names: list[str]
    descriptions: list[str]
    vectors: np.ndarray | None  # [K, D] u_e from Milvus; None: the feature cache holds them (`vector`)
    ms: float  # search + candidate fetch, wall time of the batch's `retrieve` call
    search_ms: float = 0.0  # the ANN search alone (one Milvus call per batch and filter)


def side_rows(feats: Any, batch: int, device: str) -> list[Any]:
    """Split batched features (on `device`) into `batch` single-row CPU copies (scalars such as aux losses are
    shared); one row on the CPU is already its own (a served request: no walk over its features)."""
    if batch == 1 and device == "cpu":
        return [feats]

    def row(i):
        return lambda t: (
            t[i : i + 1].detach().cpu().clone() if t.dim() and t.shape[0] == batch else t.detach().cpu()
        )

    return [map_tensors(feats, row(i)) for i in range(batch)]


def stack_sides(rows: list[Any], device: str) -> Any:
    """The inverse of `side_rows`: concatenate single-row features along the batch dimension."""
    if len(rows) == 1 and device == "cpu":
        return rows[0]  # `side_rows`' single CPU row, as it is
    leaves = [tensor_leaves(r) for r in rows]
    if len({len(x) for x in leaves}) != 1:
        raise ValueError("mention features of different structure cannot be stacked")
    columns = iter(list(zip(*leaves)))

    def cat(t: torch.Tensor) -> torch.Tensor:
        group = next(columns)
        return (torch.cat(group) if t.dim() else t).to(device)

    return map_tensors(rows[0], cat)


def gate_summary(feats: Any, i: int) -> dict[str, dict[str, list[float]]]:
    """Expert usage of mention `i` per MoE layer (intra text, intra image, the two cross calls): the share of
    its valid tokens routed to each expert and the mean gate weight (mmoe.explain, paper: usage per level)."""
    from mmoe.explain import expert_usage
    from mmoe.model import select_rows

    usage = expert_usage(select_rows(feats, [i]))
    return {
        layer: {k: [round(float(v), 4) for v in vals] for k, vals in parts.items()}
        for layer, parts in usage.items()
    }


@dataclass
class MentionQuery:
    """One validated request item; `image` is already decoded (PIL RGB) or None."""

    mention: str
    context: str = ""
    image: Any = None
    top_k: int = 10
    filter_expr: str = ""  # Milvus boolean expression built by `filter_expression`, never user text
    explain: bool = False


def filter_expression(filters) -> str:
    """`Filters` -> a Milvus expression; every value is quoted by `milvus_literal`, so none can inject syntax."""
    from workers.milvus_store import in_expression, milvus_literal

    if filters is None:
        return ""
    parts = []
    if filters.has_image is not None:
        parts.append(f"has_image == {'true' if filters.has_image else 'false'}")
    if filters.name is not None:
        parts.append(f"name == {milvus_literal(filters.name)}")
    if filters.entity_ids is not None:
        parts.append(in_expression("entity_id", list(filters.entity_ids)))
    parts += partition_expression(filters)
    return " and ".join(parts)


def partition_expression(filters) -> list[str]:
    """The partition-key clause (milvus.partition_key): an equality on it lets Milvus search one partition."""
    if getattr(filters, "partition", None) is None:
        return []
    from workers.milvus_store import PARTITION_FIELD, milvus_literal

    return [f"{PARTITION_FIELD} == {milvus_literal(filters.partition)}"]


def mention_texts(cfg, model_dir: str | Path):
    """Per-request mention text as the served model was trained (DME on or off, its selector)."""
    from cluster.config import milvus_uri
    from cluster.dme.enhance import MentionTexts
    from workers.milvus_store import indexed_uri

    return MentionTexts.for_model(cfg, model_dir, indexed_uri(milvus_uri(cfg)))


class MentionEncoder:
    """Mention text + image -> MMoE mention features and the retrieval vector u_m."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: str = "auto",
        texts=None,
        traced: bool = False,
    ):
        """`texts` (cluster.dme.enhance.MentionTexts) builds mention text as the model was trained, per-request
        DME included; None: no DME. `traced` (serve.traced_encoder): a single mention runs a checked TorchScript
        trace of the encoder (mmoe.traced; not under autocast), the same features without per-op overhead."""
        from cluster.dme.enhance import MentionTexts
        from mmoe.pretrained import load_pretrained
        from mmoe.traced import TracedSide
        from workers.device import autocast_dtype

        self.texts = texts or MentionTexts()
        self.device = device
        self.model, self.processor = load_pretrained(str(model_dir), device=device)
        self.model.eval()
        self.autocast = autocast_dtype(dtype, torch.device(device))  # bf16 on GPU with "auto", None on CPU
        self.traced = (
            TracedSide.build(self.model, self.processor, "mention", device)
            if traced and self.autocast is None
            else None
        )
        # A fast tokenizer sets padding/truncation on its shared Rust object per call: concurrent calls (threads
        # of Linker.link_queries, a batch actor's concurrent calls) fail with "Already borrowed" without this.
        self._tokenize = threading.Lock()

    @torch.inference_mode()
    def encode(self, queries: list[MentionQuery]) -> list[EncodedMention]:
        start = time.perf_counter()
        built = self.texts.build([(q.mention, q.context) for q in queries])
        dme_ms = (time.perf_counter() - start) * 1000 if self.texts.enabled else 0.0
        with self._tokenize:
            batch = self.processor([b.text for b in built], [q.image for q in queries])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        explain = any(q.explain for q in queries)
        if self.traced is not None and len(queries) == 1 and not explain:
            feats = self.traced(batch)
        else:
            with torch.autocast(
                self.device.split(":")[0], dtype=self.autocast, enabled=self.autocast is not None
            ):
                feats = self.model.encode(batch, "mention", return_gates=explain)
        if self.autocast is not None:
            feats = to_float32(feats)
        vectors = self.model.retrieval_vectors(feats).float().cpu().numpy()
        rows = side_rows(  # gates: summarised below
            dataclasses.replace(feats, gate_weights=None), len(queries), self.device
        )
        ms = (time.perf_counter() - start) * 1000
        return [
            EncodedMention(
                rows[i],
                vectors[i],
                gate_summary(feats, i) if q.explain else None,
                ms,
                dme_ms,
                built[i].dme_reason,
            )
            for i, q in enumerate(queries)
        ]


class Retriever:
    """Top-K entities by <u_m, u_e> from the collection the alias points at, plus the entity catalog.

    A Milvus Lite file is owned by one process, so with a Lite URI this must run in exactly one place (one
    Serve replica), and the index job must not write the file meanwhile (point serving at a Milvus server, or
    at the Lite server of the process that owns the file, to index while serving).
    """

    def __init__(self, cfg):
        from cluster.config import milvus_uri
        from kb_builder.storage import Storage
        from workers.milvus_store import MilvusStore, is_lite

        self.cfg = cfg
        self.storage = Storage(cfg.storage)
        level = cfg.serve.consistency_level
        self.store = MilvusStore(dataclasses.replace(cfg.milvus, consistency_level=level), milvus_uri(cfg))
        if not is_lite(self.store.uri) and level == "Strong":
            log.warning(  # measured on the embedded 2.3.5 server: p50 200 ms at Strong, 20 ms at Bounded
                "serve.consistency_level is Strong: every search on a Milvus server waits for its next time "
                "tick (~200 ms); serve with Bounded"
            )
        self._collection: str | None = None
        self._checked_at = 0.0
        self._catalog: dict[str, dict] = {}
        self._catalog_for: str | None = None
        self._catalog_at = 0.0
        self._cached_vectors: dict[str, bool] = {}  # collection -> its feature cache holds `vector`

    def _vectors_in_cache(self, collection: str) -> bool:
        """Indexes since issue 19 store u_e in the feature cache; older ones need the vectors from Milvus."""
        if collection not in self._cached_vectors:
            from workers.feature_cache import FeatureCache

            self._cached_vectors = {collection: FeatureCache(self.storage, collection).has_key("vector")}
        return self._cached_vectors[collection]

    def collection(self) -> str | None:
        """The alias target, re-resolved at most every ALIAS_REFRESH_S (a swap needs no restart)."""
        now = time.monotonic()
        if self._collection is None or now - self._checked_at > ALIAS_REFRESH_S:
            current = self.store.current_collection()
            if current is not None and current != self._collection:
                self.store.client.load_collection(current)  # Milvus keeps a restarted collection released
            self._collection, self._checked_at = current, now
        return self._collection

    def _load_catalog(self, collection: str) -> None:
        """name/description/aliases of every entity, reloaded when the alias moves (the KB may have changed)."""
        from kb_builder.shards import read_entities

        cols = ["entity_id", "name", "description", "aliases", "image_uris", "attributes"]
        df = read_entities(self.storage, self.cfg.kb.name, columns=cols)
        self._catalog = {row["entity_id"]: row for row in df.iter_rows(named=True)}
        self._catalog_for, self._catalog_at = collection, time.monotonic()

    def entity(self, entity_id: str) -> dict | None:
        collection = self.collection()
        if collection and self._catalog_for != collection:
            self._load_catalog(collection)
        row = self._catalog.get(entity_id)
        return None if row is None else dict(row)

    def search_entities(self, query: str, offset: int, limit: int) -> dict:
        """KB browser: entities whose name or an alias contains `query` (case-insensitive), exact matches,
        then prefixes, then the rest, each by name; `total` counts all matches for paging."""
        collection = self.collection()
        if collection and self._catalog_for != collection:
            self._load_catalog(collection)
        q = query.strip().casefold()

        def rank(row: dict) -> int | None:
            names = [row["name"] or "", *(row.get("aliases") or [])]
            folded = [n.casefold() for n in names]
            if not q:
                return 3
            return (
                0
                if q in folded
                else 1
                if any(n.startswith(q) for n in folded)
                else 2
                if any(q in n for n in folded)
                else None
            )

        ranked = [(r, row) for row in self._catalog.values() if (r := rank(row)) is not None]
        ranked.sort(key=lambda item: (item[0], item[1]["name"] or "", item[1]["entity_id"]))
        page = [dict(row) for _, row in ranked[offset : offset + limit]]
        return {"query": query, "total": len(ranked), "offset": offset, "limit": limit, "entities": page}

    def ready(self) -> tuple[bool, dict]:
        collection = self.collection()
        if collection is None:
            return False, {"collection": None, "reason": f"alias {self.store.alias!r} does not exist yet"}
        count = self.store.count(collection)
        return count > 0, {"collection": collection, "entities": count}

    def _search(self, vectors: np.ndarray, top_k: int, filter_expr: str):
        """One Milvus search for all `vectors`; the candidates' u_e come from the feature cache (the reranker
        reads them), or with the hits for an index whose cache lacks them (never a second Milvus call)."""
        collection = self.collection()
        if collection is None:
            raise LookupError(f"alias {self.store.alias!r} does not exist yet: run `mel index` first")
        if self._catalog_for != collection:
            self._load_catalog(collection)
        with_vectors = not self._vectors_in_cache(collection)
        hits = self.store.search(
            vectors, top_k, filter=filter_expr, collection=collection, with_vectors=with_vectors
        )
        return collection, hits

    def retrieve(self, vectors: np.ndarray, top_k: int, filter_expr: str = "") -> list[Retrieved]:
        """For each query vector, its top-K hits with their stored vectors, names and descriptions."""
        return self.retrieve_many(vectors, [top_k] * len(vectors), [filter_expr] * len(vectors))

    def retrieve_many(
        self, vectors: np.ndarray, top_ks: list[int], filter_exprs: list[str]
    ) -> list[Retrieved]:
        """Per query its own K and filter, with one search per distinct filter (the largest K of its group):
        a search's top-K' starts with its top-K for K <= K', so each query keeps the first K of its hits."""
        start = time.perf_counter()
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(top_ks), -1)
        groups: dict[str, list[int]] = {}
        for i, expr in enumerate(filter_exprs):
            groups.setdefault(expr, []).append(i)
        hits: list[list] = [[] for _ in top_ks]
        search_ms = 0.0
        for expr, rows in groups.items():
            k = max(top_ks[i] for i in rows)
            t0 = time.perf_counter()
            try:
                collection, found = self._search(vectors[rows], k, expr)
            except Exception:  # the alias may have just moved and the old collection been dropped: re-resolve
                self._collection = None
                collection, found = self._search(vectors[rows], k, expr)
            search_ms += (time.perf_counter() - t0) * 1000
            for i, q in zip(rows, found):
                hits[i] = q[: top_ks[i]]
        stale = time.monotonic() - self._catalog_at > ALIAS_REFRESH_S
        if stale and any(h.entity_id not in self._catalog for q in hits for h in q):
            self._load_catalog(collection)  # an incremental index added entities to the same collection
        ms = (time.perf_counter() - start) * 1000
        out = []
        for q in hits:
            meta = [self._catalog.get(h.entity_id, {}) for h in q]
            out.append(
                Retrieved(
                    collection=collection,
                    ids=[h.entity_id for h in q],
                    names=[m.get("name", h.name) for m, h in zip(meta, q)],
                    descriptions=[m.get("description", "") for m in meta],
                    vectors=None
                    if not q or q[0].vector is None
                    else np.asarray([h.vector for h in q], dtype=np.float32).reshape(len(q), -1),
                    ms=ms,
                    search_ms=search_ms,
                )
            )
        return out


class Reranker:
    """Exact MMoE scores for each mention's own K candidates, from cached entity-side features."""

    def __init__(self, cfg, model_dir: str | Path, device: str = "cpu"):
        from kb_builder.storage import Storage
        from mmoe.pretrained import load_pretrained

        self.storage = Storage(cfg.storage)
        self.device = device
        self.model, _ = load_pretrained(str(model_dir), device=device)
        self.model.eval()
        self._caches: dict[str, Any] = {}

    def _cache(self, collection: str):
        from workers.feature_cache import FeatureCache

        if collection not in self._caches:
            self._caches = {collection: FeatureCache(self.storage, collection)}  # keep only the live one
        return self._caches[collection]

    def _load(self, collection: str, ids: list[str]) -> dict:
        try:
            return self._cache(collection).load(ids)
        except KeyError:  # an incremental index wrote a delta file after the cache was opened: reopen once
            self._caches.pop(collection, None)
            return self._cache(collection).load(ids)

    def _candidates(self, rets: list[Retrieved]):
        """The mentions' candidates as [B, K, ...] tensors: u_e, the cached features, and a [B, K] validity mask.

        One feature-cache load per collection (one, but for an alias swap mid-batch) fills the whole batch, so
        no per-mention loads or stacking. Padding repeats a mention's first candidate (finite features, no NaN)
        and is masked out of the ranking.
        """
        k_max = max(len(r.ids) for r in rets)
        groups: dict[str, list[int]] = {}
        for b, r in enumerate(rets):
            groups.setdefault(r.collection, []).append(b)
        parts = []
        for collection, rows in groups.items():
            ids = [e for b in rows for e in rets[b].ids + rets[b].ids[:1] * (k_max - len(rets[b].ids))]
            part = {  # [G*K, ...] -> [G, K, ...] in float32 (the cache may be stored in fp16)
                key: (t.float() if t.is_floating_point() else t).reshape(len(rows), k_max, *t.shape[1:])
                for key, t in self._load(collection, ids).items()
            }
            if "vector" not in part:  # an index whose cache lacks u_e: they came with the hits (fp32)
                vecs = [np.asarray(rets[b].vectors) for b in rows]
                part["vector"] = torch.from_numpy(
                    np.stack([np.concatenate([v, v[:1].repeat(k_max - len(v), 0)]) for v in vecs])
                )
            parts.append(part)
        if len(parts) == 1:
            merged = parts[0]
        else:  # back to the mentions' order
            back = torch.argsort(torch.tensor([b for rows in groups.values() for b in rows]))
            merged = {key: torch.cat([p[key] for p in parts])[back] for key in parts[0]}
        vectors = merged.pop("vector").to(self.device)
        mask = torch.arange(k_max)[None, :] < torch.tensor([len(r.ids) for r in rets])[:, None]
        return vectors, {key: t.to(self.device) for key, t in merged.items()}, mask

    @torch.inference_mode()
    def rerank(self, items: list[tuple[EncodedMention, Retrieved]]) -> list[dict]:
        """-> per item {order, scores, units, ms, fetch_ms}: candidates sorted by the full score, best first."""
        start = time.perf_counter()
        out: list[dict | None] = [None] * len(items)
        live = [i for i, (_, r) in enumerate(items) if r.ids]
        for i in set(range(len(items))) - set(live):
            out[i] = {"order": [], "scores": [], "units": [], "ms": 0.0, "fetch_ms": 0.0}
        if live:
            vectors, cache, mask = self._candidates([items[i][1] for i in live])
            fetch_ms = (time.perf_counter() - start) * 1000  # the candidates' cached features and vectors
            start = time.perf_counter()
            mentions = stack_sides([items[i][0].features for i in live], self.device)
            scored = self.model.score_candidates(mentions, vectors, cache)
            scores = scored.scores.float().masked_fill(~mask, float("-inf")).cpu()
            units = torch.stack([scored.text, scored.image, scored.cross], dim=-1).float().cpu()
            ms = (time.perf_counter() - start) * 1000
            for row, i in enumerate(live):
                k = len(items[i][1].ids)
                order = torch.argsort(scores[row, :k], descending=True).tolist()
                out[i] = {
                    "order": order,
                    "scores": scores[row, order].tolist(),
                    "units": units[row, order].tolist(),
                    "ms": ms,  # forward: stack and score
                    "fetch_ms": fetch_ms,
                }
        return out


STAGES = ("parse", "encode_wait", "encode", "search", "fetch", "rerank_wait", "rerank", "assemble")
"""The per-stage keys of an answer's `timings_ms`, in pipeline order (plus `retrieve` = search + its own
fetch, kept for older readers, and `total`, the ingress's wall time). `*_wait`: queue wait plus the hop to a
deployment; `fetch`: the candidates' vectors and cached features; client-side HTTP = client time - total."""


def assemble(
    query: MentionQuery,
    enc: EncodedMention,
    ret: Retrieved,
    ranked: dict,
    threshold,
    calibration: dict | None = None,
    waits: dict[str, float] | None = None,
) -> dict:
    """The `LinkResponse` body: top_k candidates with score and confidence, the NIL decision (on the best
    confidence, `threshold` in confidence units) and per-stage timings (`STAGES`; `waits` as measured by the
    caller)."""
    from cluster.evaluate.calibration import serving_confidences

    start = time.perf_counter()
    confidence = serving_confidences([float(s) for s in ranked["scores"]], calibration or {})
    candidates = []
    for rank, (j, score, units) in enumerate(zip(ranked["order"], ranked["scores"], ranked["units"]), 1):
        if rank > query.top_k:
            break
        cand = {
            "entity_id": ret.ids[j],
            "name": ret.names[j],
            "description": ret.descriptions[j],
            "score": round(float(score), 6),
            "confidence": round(confidence[rank - 1], 6),
            "rank": rank,
        }
        if query.explain:
            cand["units"] = dict(zip(("text", "image", "cross"), (round(float(u), 6) for u in units)))
        candidates.append(cand)
    best = candidates[0]["confidence"] if candidates else None
    nil = best is None or (threshold is not None and best < threshold)  # nothing retrieved: NIL too
    timings = {
        **(waits or {}),
        "encode": enc.ms,
        "search": ret.search_ms,
        "fetch": ret.ms - ret.search_ms + ranked.get("fetch_ms", 0.0),
        "retrieve": ret.ms,
        "rerank": ranked["ms"],
        "assemble": (time.perf_counter() - start) * 1000,
    }
    out = {
        "candidates": candidates,
        "nil": bool(nil),
        "nil_threshold": threshold,
        "collection": ret.collection,
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
    }
    if enc.dme_reason:  # the model was trained with DME: the request ran it (inside "encode")
        out["timings_ms"]["dme"] = round(enc.dme_ms, 3)
        out["dme"] = enc.dme_reason
    if query.explain and enc.gates is not None:
        out["explain"] = {"expert_usage": enc.gates}
    return out


@dataclass
class Linker:
    """The whole pipeline in one process; implements `cluster.serve.http.LinkBackend` for in-process serving."""

    encoder: MentionEncoder
    retriever: Retriever
    reranker: Reranker
    retrieve_k: int = 50
    threshold: float | None = None  # on the best candidate's confidence
    model_dir: Path = field(default_factory=Path)
    tag: str = ""  # model_tag(model_dir); "" skips the index/model check
    calibration: dict = field(default_factory=dict)  # calibration.json beside the model ({}: plain softmax)

    @classmethod
    def from_config(cls, cfg, device: str | None = None, model_dir: str | Path | None = None) -> Linker:
        model_dir = Path(model_dir) if model_dir else serving_model_dir(cfg)
        device = str(pick_device(device, cfg.serve.num_gpus_per_replica))
        return cls(
            MentionEncoder(
                model_dir, device, cfg.encoder.dtype, mention_texts(cfg, model_dir), cfg.serve.traced_encoder
            ),
            Retriever(cfg),
            Reranker(cfg, model_dir, device),
            cfg.serve.retrieve_k,
            nil_threshold(cfg.serve, model_dir),
            model_dir,
            model_tag(model_dir),
            read_calibration(model_dir),
        )

    def close(self) -> None:
        """Close the Milvus client, e.g. before this process forks (Ray start-up): gRPC threads and fork do not mix."""
        self.retriever.store.close()

    def link(self, queries: list[MentionQuery]) -> list[dict]:
        encoded = self.encoder.encode(queries)
        retrieved = self.retriever.retrieve_many(
            np.stack([e.vector for e in encoded]),
            [max(self.retrieve_k, q.top_k) for q in queries],
            [q.filter_expr for q in queries],
        )  # one search per distinct filter, not per query
        for collection in {r.collection for r in retrieved}:
            ensure_indexed_by(collection, self.tag)
        ranked = self.reranker.rerank(list(zip(encoded, retrieved)))
        return [
            assemble(q, e, r, rr, self.threshold, self.calibration)
            for q, e, r, rr in zip(queries, encoded, retrieved, ranked)
        ]

    # -- LinkBackend -----------------------------------------------------------------------------------------
    async def link_queries(self, queries: list[MentionQuery]) -> list[dict]:
        return await asyncio.to_thread(self.link, queries)

    async def entity(self, entity_id: str) -> dict | None:
        return await asyncio.to_thread(self.retriever.entity, entity_id)

    async def search_entities(self, query: str, offset: int, limit: int) -> dict:
        return await asyncio.to_thread(self.retriever.search_entities, query, offset, limit)

    async def readiness(self) -> tuple[bool, dict]:
        return guard_readiness(*await asyncio.to_thread(self.retriever.ready), self.tag)
