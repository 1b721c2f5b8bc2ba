"""The entity vector store: versioned Milvus collections behind one alias that serving reads.

Schema of every collection (one row per KB entity):

| field        | type                 | why                                                        |
|--------------|----------------------|------------------------------------------------------------|
| entity_id    | VARCHAR(512), PK     | upserts are keyed by it, so re-runs never duplicate rows   |
| vector       | FLOAT_VECTOR(D)      | u_e, searched by inner product (reference section 2)       |
| name         | VARCHAR(2048 bytes)  | returned with hits; truncated on a UTF-8 boundary          |
| has_image    | BOOL                 | lets a caller filter text-only entities                    |
| content_hash | VARCHAR(128)         | the KB row's hash: incremental updates compare it          |
| partition    | VARCHAR(256), opt.   | only with milvus.partition_key: the KB column's value, a   |
|              |                      | Milvus partition key (filters on it search one partition)  |

A full build writes a new collection `<alias>_v<tag>` and then `swap_alias` points the alias at it, so searches
keep answering from the old collection until the new one is complete.

Milvus Lite (a local `.db` path) builds FLAT/BRUTE_FORCE, AUTOINDEX and, when faiss-cpu is importable, HNSW,
HNSW_SQ, IVF_FLAT and IVF_SQ8 indexes; anything else (IVF_PQ, DISKANN, SCANN, ...) falls back to FLAT with a
logged warning. A Lite file is owned by one process (it holds a file lock): write through one MilvusStore.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.config import MilvusConfig
from workers.lite_engine import engine_for
from workers.lite_engine import search as lite_search

log = logging.getLogger(__name__)

ID_MAX_BYTES = 512
NAME_MAX_BYTES = 2048
HASH_MAX_BYTES = 128
PARTITION_FIELD = "partition"
PARTITION_MAX_BYTES = 256
OUTPUT_FIELDS = ["entity_id", "name", "has_image", "content_hash"]
LITE_INDEXES_ALWAYS = {"FLAT", "AUTOINDEX"}
LITE_INDEXES_FAISS = {"HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8"}


_LITERAL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"}


def milvus_literal(value: str) -> str:
    """`value` as a Milvus string literal: the one place user or KB text enters an expression.

    Milvus filter templates (`filter_params`) would bind values instead, but Milvus Lite rejects the template
    syntax (`unexpected character '{'`), so values are quoted here. The parser takes raw UTF-8 and reads only
    `\\`, `\"`, `\n` and `\r` as escapes; `json.dumps`' `\\uXXXX` escapes are a parse error, hence not JSON.
    Every other character (NUL, tabs, emoji, RTL marks) goes through as itself.
    """
    return '"' + "".join(_LITERAL_ESCAPES.get(ch, ch) for ch in str(value)) + '"'


def in_expression(field: str, values: list[str]) -> str:
    """`field in ["a", "b"]` with every value quoted by `milvus_literal`."""
    return f"{field} in [{', '.join(milvus_literal(v) for v in values)}]"


class DimensionMismatchError(ValueError):
    """Vectors whose dimension differs from the collection's (e.g. a different model against an old index)."""


@dataclass
class Hit:
    entity_id: str
    score: float  # inner product <u_m, u_e> (metric IP)
    name: str
    vector: list[float] | None = None  # u_e [D], with search(with_vectors=True)


def is_lite(uri: str) -> bool:
    """Milvus Lite is a local `.db` path; servers are http(s)/tcp URIs."""
    return str(uri).endswith(".db") and "://" not in str(uri)


def lite_advice(uri: str, entities: int, threshold: int) -> str | None:
    """Advice to move to a Milvus server when a Lite file holds more than `threshold` entities, else None.

    Milvus Lite 3 searches in Python, row by row over every segment, whatever the index: `bench_serve.py`
    measured a `/link` at 11.9 / 35.8 / 206 ms with 120 / 10k / 100k entities on Lite, and 19.0 / 20.3 ms at
    120 / 100k on the embedded 2.3.5 server with HNSW (Lite's search grows ~1.6 us an entity, so the two cross
    near 5k entities)."""
    if not is_lite(uri) or threshold <= 0 or entities <= threshold:
        return None
    return (
        f"{entities:,} entities in a Milvus Lite file: Lite searches in Python row by row (a /link took 36 ms "
        f"at 10k and 206 ms at 100k entities, against 19-20 ms on a Milvus server with HNSW); for a KB this "
        f"size set milvus.uri to a Milvus server and milvus.index_type to HNSW (docs/milvus.md)"
    )


def indexed_uri(uri: str) -> str:
    """`uri`, or "" for a Milvus Lite file that does not exist yet: nothing is indexed, so callers fall back to
    names alone, and opening it would create an empty database."""
    return "" if is_lite(uri) and not Path(uri).expanduser().exists() else uri


def lite_index_types() -> set[str]:
    """Index types this Milvus Lite build can really construct (faiss-backed ones need faiss-cpu)."""
    try:
        from milvus_lite.index.factory import is_faiss_available

        faiss = is_faiss_available()
    except ImportError:
        faiss = False
    return LITE_INDEXES_ALWAYS | (LITE_INDEXES_FAISS if faiss else set())


def clip_utf8(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` UTF-8 bytes without splitting a character."""
    text = text or ""
    if len(text) * 4 <= max_bytes:  # a character is at most 4 bytes: no need to encode
        return text
    raw = text.encode("utf-8")
    return text if len(raw) <= max_bytes else raw[:max_bytes].decode("utf-8", errors="ignore")


def _vector_matrix(ids: list[str], vectors: list, dim: int, collection: str) -> np.ndarray:
    """The rows' vectors as one float32 [N, dim] matrix; a wrong length or a NaN/inf raises naming the entity."""
    for eid, vector in zip(ids, vectors):
        if np.size(vector) != dim:
            raise DimensionMismatchError(
                f"entity {eid!r}: vector has {np.size(vector)} dims, collection {collection!r} has {dim}"
            )
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(ids), dim)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        raise ValueError(f"entity {ids[int(np.argmin(finite))]!r}: vector has NaN/inf values")
    return matrix


def hit_id(hit) -> str:
    """The primary key of a search hit: Milvus Lite names it `entity_id`, a 2.3 server `id` (pymilvus 3)."""
    for key in ("entity_id", "id"):
        if key in hit:
            return str(hit[key])
    return str(hit["entity"]["entity_id"])


def _hits(q, with_vectors: bool) -> list[Hit]:
    """One query's hits from pymilvus's id and distance columns (its `HybridHits`); per hit only the entity
    dict is read, past pymilvus's `Hit.__getitem__` (a try/except per key): this runs for every candidate."""
    if with_vectors:
        q.materialize()  # decode the vectors into the entity dicts (pymilvus does it lazily)
    entities = [dict.__getitem__(h, "entity") for h in list.__iter__(q)]
    return [
        Hit(str(i), float(d), e.get("name", ""), e.get("vector"))
        for i, d, e in zip(q.ids, q.distances, entities)
    ]


def _engine_hits(q: list[dict]) -> list[Hit]:
    """One query's hits as Lite's engine gives them (`workers.lite_engine.search`)."""
    return [
        Hit(str(h["id"]), float(h["distance"]), h["entity"].get("name", ""), h["entity"].get("vector"))
        for h in q
    ]


class MilvusStore:
    """MilvusClient wrapper with the project's schema, alias swap and exact counts."""

    def __init__(self, cfg: MilvusConfig, uri: str):
        from pymilvus import MilvusClient

        self.cfg = cfg
        self.uri = str(uri)
        self.alias = cfg.collection
        if is_lite(self.uri):
            Path(self.uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.uri = str(Path(self.uri).expanduser().resolve())
        self.client = MilvusClient(uri=self.uri, token=cfg.token or "")
        self._dims: dict[str, int] = {}
        self._loaded: set[str] = set()

    def _ready(self, name: str) -> str:
        """The collection behind `name` (alias or collection), loaded for reading: a collection opened by a
        new process starts released and refuses search/get/query until loaded."""
        target = self.resolve(name)
        if target not in self._loaded:
            self.client.load_collection(target)
            self._loaded.add(target)
        return target

    # -- collections ----------------------------------------------------------------------------------------
    def index_spec(self) -> tuple[str, dict]:
        """(index_type, params) to build: the configured one, or FLAT where Milvus Lite cannot build it."""
        index_type = self.cfg.index_type.upper()
        params = dict(self.cfg.index_params)
        if is_lite(self.uri) and index_type not in lite_index_types():
            log.warning(
                "Milvus Lite cannot build %s here (supported: %s); using FLAT",
                index_type,
                sorted(lite_index_types()),
            )
            return "FLAT", {}
        return index_type, params

    def exists(self, name: str) -> bool:
        return self.client.has_collection(name)

    def dim(self, name: str) -> int:
        if name not in self._dims:
            fields = self.client.describe_collection(name)["fields"]
            self._dims[name] = int(next(f["params"]["dim"] for f in fields if f["name"] == "vector"))
        return self._dims[name]

    def create(self, name: str, dim: int) -> None:
        """Create `name` with dimension `dim`; an existing collection must have the same dimension."""
        from pymilvus import DataType, MilvusClient

        if self.exists(name):
            self.check_dim(name, dim)
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("entity_id", DataType.VARCHAR, max_length=ID_MAX_BYTES, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        schema.add_field("name", DataType.VARCHAR, max_length=NAME_MAX_BYTES)
        schema.add_field("has_image", DataType.BOOL)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=HASH_MAX_BYTES)
        if self.cfg.partition_key:
            schema.add_field(
                PARTITION_FIELD, DataType.VARCHAR, max_length=PARTITION_MAX_BYTES, is_partition_key=True
            )
        index_type, params = self.index_spec()
        index = self.client.prepare_index_params()
        index.add_index(
            field_name="vector", index_type=index_type, metric_type=self.cfg.metric, params=params
        )
        self.client.create_collection(
            name, schema=schema, index_params=index, consistency_level=self.cfg.consistency_level
        )
        self._dims[name] = int(dim)
        log.info("created collection %s (dim %d, %s/%s)", name, dim, index_type, self.cfg.metric)

    def check_dim(self, name: str, dim: int) -> None:
        have = self.dim(name)
        if have != int(dim):
            raise DimensionMismatchError(
                f"collection {name!r} stores {have}-d vectors but the model produces {dim}-d vectors; "
                f"re-index in full mode (a new collection) instead of writing into this one"
            )

    def drop(self, name: str) -> None:
        self.client.drop_collection(name)
        self._dims.pop(name, None)
        self._loaded.discard(name)

    def list_versions(self) -> list[str]:
        """Collections built for this alias, oldest first (names sort by their tag)."""
        return sorted(c for c in self.client.list_collections() if c.startswith(f"{self.alias}_v"))

    # -- rows -----------------------------------------------------------------------------------------------
    def upsert(self, name: str, rows: list[dict]) -> int:
        """Insert or replace rows keyed by entity_id; returns the number written. Bad rows raise naming the id."""
        clean = self.checked_rows(name, rows)
        step = max(1, self.cfg.insert_batch_size)
        for start in range(0, len(clean), step):
            batch = clean[start : start + step]
            if self.cfg.partition_key:
                # Milvus 2.3.5's upsert routes partition-key rows to a partition that `partition == x` then
                # never searches (measured: `like` finds them, `==`/`in` do not); delete + insert is routed right.
                self.client.delete(name, ids=[r["entity_id"] for r in batch])
                self.client.insert(name, batch)
            else:
                self.client.upsert(name, batch)
        return len(clean)

    def checked_rows(self, name: str, rows: list[dict]) -> list[dict]:
        """`rows` validated (id, dimension, finite) and in the collection's schema, vectors as float32 rows.

        Vectors are checked as one [N, D] matrix (one `isfinite`) and handed to pymilvus as numpy rows: it
        converts each row as it packs it, and an upsert measured 10-20% faster than with all N rows converted
        to Python float lists first (`bench_milvus_ingest.py` times this step apart from the Milvus call)."""
        dim = self.dim(name)
        ids = [str(row["entity_id"]) for row in rows]
        for eid in ids:
            if not eid or len(eid.encode("utf-8")) > ID_MAX_BYTES:
                raise ValueError(f"entity_id {eid[:80]!r}: empty or longer than {ID_MAX_BYTES} bytes")
        matrix = _vector_matrix(ids, [row["vector"] for row in rows], dim, name)
        partitioned = bool(self.cfg.partition_key)
        clean = []
        for eid, row, vector in zip(ids, rows, matrix):
            clean.append(
                {
                    "entity_id": eid,
                    "vector": vector,
                    "name": clip_utf8(str(row.get("name", "")), NAME_MAX_BYTES),
                    "has_image": bool(row.get("has_image", False)),
                    "content_hash": clip_utf8(str(row.get("content_hash", "")), HASH_MAX_BYTES),
                }
            )
            if partitioned:
                clean[-1][PARTITION_FIELD] = clip_utf8(
                    str(row.get(PARTITION_FIELD) or ""), PARTITION_MAX_BYTES
                )
        return clean

    def flush(self, name: str) -> None:
        """Persist what was upserted (Milvus seals segments; Lite writes its WAL to disk)."""
        self.client.flush(name)

    def delete(self, name: str, ids: list[str]) -> None:
        if ids:
            self.client.delete(name, filter=in_expression("entity_id", [str(i) for i in ids]))

    def count(self, name: str | None = None) -> int:
        """Exact row count (count(*) with Strong consistency; deleted and replaced rows are not counted)."""
        res = self.client.query(
            self._ready(name or self.alias), filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(res[0]["count(*)"])

    def get(self, ids: list[str], collection: str | None = None, with_vectors: bool = False) -> list[dict]:
        """Rows for `ids`, in the order of `ids`; ids that are absent are skipped."""
        if not ids:
            return []
        fields = OUTPUT_FIELDS + (["vector"] if with_vectors else [])
        rows = self.client.query(  # not client.get: it splices ids into an expression unquoted (O'Brien)
            self._ready(collection or self.alias),
            filter=in_expression("entity_id", [str(i) for i in ids]),
            output_fields=fields,
            consistency_level="Strong",
        )
        by_id = {r["entity_id"]: dict(r) for r in rows}
        return [by_id[str(i)] for i in ids if str(i) in by_id]

    def content_hashes(self, name: str, ids: list[str]) -> dict[str, str]:
        return {r["entity_id"]: r["content_hash"] for r in self.get(ids, collection=name)}

    def search(
        self, vectors, top_k: int, filter: str = "", collection: str | None = None, with_vectors: bool = False
    ) -> list[list[Hit]]:
        """Top-k entities by inner product for each query vector ([B, D]); `with_vectors` returns each hit's
        stored vector in the same call (serving's rerank needs it: no second round trip). A Lite file this
        process serves is searched in-process (workers.lite_engine: Lite's own engine, no gRPC hop)."""
        data = np.asarray(vectors, dtype=np.float32)
        if data.ndim == 1:
            data = data[None, :]
        target = self._ready(collection or self.alias)
        self.check_dim(target, data.shape[1])
        fields = ["name", "vector"] if with_vectors else ["name"]
        if (db := engine_for(self.uri)) is not None:
            found = lite_search(
                db, target, data, top_k, filter, fields, self.cfg.metric, self.cfg.search_params
            )
            return [_engine_hits(q) for q in found]
        res = self.client.search(
            target,
            data=data.tolist(),
            limit=int(top_k),
            filter=filter,
            output_fields=fields,
            search_params={"metric_type": self.cfg.metric, "params": dict(self.cfg.search_params)},
            consistency_level=self.cfg.consistency_level,
        )
        return [_hits(q, with_vectors) for q in res]

    # -- alias ----------------------------------------------------------------------------------------------
    def current_collection(self) -> str | None:
        """The collection the alias points at, or None before the first build."""
        if self.alias not in self.client.list_aliases().get("aliases", []):
            return None
        return self.client.describe_alias(self.alias)["collection_name"]

    def resolve(self, name: str) -> str:
        """An alias name -> its collection; collection names pass through."""
        if name == self.alias:
            current = self.current_collection()
            if current is None:
                raise LookupError(f"alias {name!r} does not exist yet: run `mel index` first")
            return current
        return name

    def swap_alias(self, collection: str, drop_old: bool = True) -> str | None:
        """Point the alias at `collection` (create or alter), then drop the collection it pointed at before."""
        old = self.current_collection()
        if old == collection:
            return None
        if old is None:
            self.client.create_alias(collection, self.alias)
        else:
            self.client.alter_alias(collection, self.alias)
        log.info("alias %s -> %s (was %s)", self.alias, collection, old)
        if old is not None and drop_old:
            self.drop(old)
        return old

    def close(self, release_file: bool = False) -> None:
        """Close the client; `release_file` also stops this process's Milvus Lite server and frees the file lock
        (only when no other MilvusStore in this process still uses the same file)."""
        self.client.close()
        if release_file and is_lite(self.uri):
            try:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.uri)
            except ImportError:
                pass
