"""Milvus Lite searched in-process: the engine behind a Lite URI that this process serves, without gRPC.

Milvus Lite 3 is Python inside the process that opens the file: pymilvus starts Lite's gRPC adapter on a
thread (`milvus_lite.server_manager`), and every client call crosses loopback gRPC into that thread,
serialised on both sides. For a served mention's 50-hit search that hop cost ~1.6 of ~3.5 ms (engine alone
1.9 ms; bench_serve). `search` calls the engine's `Collection.search` (Lite's embedded API, the call its
adapter makes with the same arguments), so hits, order and scores are Lite's own; writes, aliases and queries
still go through pymilvus. Looking up the adapter's database reads one private name of the pinned
milvus-lite (`server_manager_instance._servers`); anything unexpected returns None and the caller uses gRPC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def engine_for(uri: str) -> Any | None:
    """The in-process `milvus_lite.MilvusLite` database behind `uri` (its `.db` path, or the loopback
    http URI of its adapter in this process), else None (a Milvus server, another process's Lite)."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return None
    servers = getattr(server_manager_instance, "_servers", None)
    if not isinstance(servers, dict) or not servers:
        return None
    uri = str(uri).rstrip("/")
    entries = list(servers.items())
    if not all(isinstance(entry, tuple) and len(entry) == 3 for _, entry in entries):
        return None
    for path, (_, db, port) in entries:  # the store's own spelling: no filesystem call per search
        if uri in (path, f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            return db if hasattr(db, "get_collection") else None
    if "://" in uri:
        return None
    real = Path(uri).expanduser().resolve()  # a relative or symlinked spelling of a served file
    for path, (_, db, _) in entries:
        if real == Path(path).resolve():
            return db if hasattr(db, "get_collection") else None
    return None


def search(
    db: Any,
    collection: str,
    vectors: np.ndarray,
    top_k: int,
    filter: str,
    output_fields: list[str],
    metric: str,
    params: dict,
) -> list[list[dict]]:
    """Per query its hits as Lite's engine gives them: {"id", "distance", "entity": {field: value}}."""
    return db.get_collection(collection).search(
        vectors.tolist(),
        top_k=int(top_k),
        metric_type=metric,
        expr=filter or None,
        output_fields=list(output_fields),
        search_params=dict(params),
    )
