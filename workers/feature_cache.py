"""Entity-side rerank features on disk: one safetensors file per entity shard, rows aligned with its ids.

Reranking adds the g2l terms to the ANN inner product using features computed from the entity side only
(reference section 2), so they are computed once at indexing time and looked up per candidate here.

Layout: `<root>/features/<collection>/part-00000.safetensors` (full builds, one per KB shard) and
`delta-<tag>.safetensors` (incremental updates). Each file's metadata holds `ids` (JSON list, row order) and
`deleted` (JSON list of ids removed by that update). Files are applied in order (`part-*` by name, then
`delta-*` by name), a later file's rows replacing earlier ones. Reads memory-map the file (the safetensors format is an
8-byte header length, a JSON header, then raw row-major arrays), so `load(ids)` touches only the rows asked for.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.numpy import save as save_safetensors

from kb_builder.storage import Storage

DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
}
SUFFIX = ".safetensors"


@dataclass
class _Shard:
    uri: str
    ids: list[str]
    deleted: list[str]
    arrays: dict[str, np.ndarray] | None = None  # memory-mapped, opened on first load


def _read_header(path) -> tuple[dict, int]:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(size)), 8 + size


def _memmap(path) -> dict[str, np.ndarray]:
    header, offset = _read_header(path)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        shape = tuple(info["shape"])
        if end == start:
            out[name] = np.zeros(shape, dtype=dtype)
            continue
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset + start, shape=shape)
    return out


class FeatureCache:
    """Write per-shard feature files; `load(ids)` returns tensors row-aligned with `ids`."""

    def __init__(self, storage: Storage, collection: str):
        self.storage = storage
        self.collection = collection
        self.prefix = storage.join("features", collection)
        self._shards: dict[str, _Shard] | None = None
        self._index: dict[str, tuple[str, int]] | None = None  # id -> (shard name, row)

    def uri(self, name: str) -> str:
        return self.storage.join("features", self.collection, name + SUFFIX)

    # -- writing --------------------------------------------------------------------------------------------
    def write_shard(self, name: str, ids: list[str], arrays: dict, deleted: list[str] | None = None) -> str:
        """Write one file; every array's first dimension must equal len(ids)."""
        clean = {}
        for key, value in arrays.items():
            arr = value.detach().cpu() if isinstance(value, torch.Tensor) else value
            if isinstance(arr, torch.Tensor):
                arr = (arr.float() if arr.dtype == torch.bfloat16 else arr).numpy()
            arr = np.ascontiguousarray(arr)
            if arr.shape[:1] != (len(ids),):
                raise ValueError(
                    f"feature {key!r} has {arr.shape[0]} rows for {len(ids)} ids in shard {name!r}"
                )
            clean[key] = arr
        meta = {"ids": json.dumps([str(i) for i in ids]), "deleted": json.dumps(list(deleted or []))}
        uri = self.uri(name)
        self.storage.write_bytes(uri, save_safetensors(clean, metadata=meta))
        self._shards = self._index = None  # rebuilt on the next load
        return uri

    def has_shard(self, name: str) -> bool:
        return self.storage.exists(self.uri(name))

    def shard_names(self) -> list[str]:
        names = [u.rsplit("/", 1)[-1] for u in self.storage.list(self.prefix)]
        names = [n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX) and not n.startswith(".")]
        return sorted(names, key=lambda n: (n.startswith("delta-"), n))  # full shards first, then deltas

    # -- reading --------------------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._index is not None:
            return
        shards: dict[str, _Shard] = {}
        index: dict[str, tuple[str, int]] = {}
        for name in self.shard_names():
            path = self.storage.local_path(self.uri(name))
            meta = _read_header(path)[0].get("__metadata__", {})
            shard = _Shard(
                str(path), json.loads(meta.get("ids", "[]")), json.loads(meta.get("deleted", "[]"))
            )
            shards[name] = shard
            for eid in shard.deleted:
                index.pop(eid, None)
            for row, eid in enumerate(shard.ids):
                index[eid] = (name, row)
        self._shards, self._index = shards, index  # set complete: a concurrent reader never sees half of it

    def has_key(self, key: str) -> bool:
        """Whether every file holds the array `key` (e.g. `vector`, written by indexes since issue 19)."""
        self._open()
        return bool(self._shards) and all(key in _read_header(s.uri)[0] for s in self._shards.values())

    def ids(self) -> list[str]:
        """Every entity id with features (after applying deltas)."""
        self._open()
        return list(self._index)

    def __contains__(self, eid: str) -> bool:
        self._open()
        return eid in self._index

    def load(self, ids: list[str]) -> dict[str, torch.Tensor]:
        """Features of `ids`, rows in the order of `ids`; unknown ids raise KeyError naming them."""
        self._open()
        missing = [i for i in ids if i not in self._index]
        if missing:
            raise KeyError(f"no cached features for {len(missing)} entities, e.g. {missing[:5]}")
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for pos, eid in enumerate(ids):
            name, row = self._index[eid]
            by_shard.setdefault(name, []).append((pos, row))
        out: dict[str, np.ndarray] = {}
        for name, pairs in by_shard.items():
            shard = self._shards[name]
            if shard.arrays is None:
                shard.arrays = _memmap(shard.uri)
            pos = np.array([p for p, _ in pairs])
            rows = np.array([r for _, r in pairs])
            for key, arr in shard.arrays.items():
                if key not in out:
                    out[key] = np.zeros((len(ids), *arr.shape[1:]), dtype=arr.dtype)
                out[key][pos] = arr[rows]
        return {k: torch.from_numpy(v) for k, v in out.items()}
