"""Entity and mention encoding: the CPU stage (images + tokenizing) and the model stage, as plain functions.

`prepare_entities` runs where CPUs are (a Ray task, or inline in a bare loop): it fetches/decodes images and
runs the processor, giving numpy arrays. `EntityEncoder` only runs the model, so a GPU actor never waits on
image downloads. Outputs per entity: the retrieval vector u_e (float32, what Milvus stores) and the rerank
cache (reference section 2), stored at `encoder.cache_dtype`; rerank reads back exactly what was stored.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmoe.model import to_float32
from mmoe.pretrained import load_pretrained
from mmoe.texts import entity_text, mention_text
from workers.config import EncoderConfig
from workers.device import autocast_dtype, pick_device
from workers.images import ImageLoader

CACHE_DTYPES = {"fp16": np.float16, "fp32": np.float32}


@dataclass
class PreparedBatch:
    """The CPU stage's output for one batch of entities (numpy, cheap to ship through the object store)."""

    ids: list[str]
    names: list[str]
    content_hashes: list[str]
    inputs: dict[
        str, np.ndarray
    ]  # processor output: input_ids [B,L], attention_mask [B,L], pixel_values, image_mask
    image_errors: list[str] = field(default_factory=list)


@dataclass
class EncodedEntities:
    ids: list[str]
    vectors: np.ndarray  # [n,D] float32 retrieval vectors u_e
    cache: dict[
        str, np.ndarray
    ]  # rerank features, row-aligned with ids (floats at cache_dtype; `vector` fp32)
    has_image: np.ndarray  # [n] bool: False = encoded text-only (no image, or it failed to load)
    image_errors: list[str] = field(default_factory=list)  # one message per image that failed, naming its uri
    names: list[str] = field(default_factory=list)
    content_hashes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "entity_id: reason" for rows that could not be encoded


def first_image_uri(row: dict) -> str | None:
    uris = row.get("image_uris") or []
    return uris[0] if len(uris) else None


def prepare_entities(rows: list[dict], processor, loader: ImageLoader | None) -> PreparedBatch:
    """Load each entity's first image (rows may carry a ready `image` instead) and run the processor."""
    images, errors = [], []
    for row in rows:
        if "image" in row:
            images.append(row["image"])
            continue
        img, err = loader.load(first_image_uri(row)) if loader else (None, None)
        images.append(img)
        if err:
            errors.append(f"entity {row['entity_id']}: {err}")
    texts = [entity_text(row.get("name") or "", row.get("description") or "") for row in rows]
    inputs = {k: v.numpy() for k, v in processor(texts, images).items()}
    return PreparedBatch(
        ids=[str(r["entity_id"]) for r in rows],
        names=[r.get("name") or "" for r in rows],
        content_hashes=[r.get("content_hash") or "" for r in rows],
        inputs=inputs,
        image_errors=errors,
    )


class EntityEncoder:
    """Loads the model once on one device; encodes prepared batches, entity rows or mention rows."""

    def __init__(
        self,
        model_dir: str | Path,
        encoder_cfg: EncoderConfig,
        device: str | None = None,
        loader: ImageLoader | None = None,
    ):
        self.cfg = encoder_cfg
        self.device = pick_device(device)
        self.dtype = autocast_dtype(encoder_cfg.dtype, self.device)
        self.model, self.processor = load_pretrained(model_dir, device=self.device)
        self.loader = loader
        self.retrieval_dim = self.model.retrieval_dim
        self.cache_dtype = CACHE_DTYPES[encoder_cfg.cache_dtype]

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"GPU ({torch.cuda.get_device_name(self.device)})"
        return "CPU"

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _encode_inputs(self, inputs: dict[str, np.ndarray]):
        with (
            warnings.catch_warnings()
        ):  # arrays from Ray's object store are read-only; the model only reads them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            batch = {
                k: torch.from_numpy(np.asarray(v)).to(self.device, non_blocking=True)
                for k, v in inputs.items()
            }
        with torch.inference_mode(), self._autocast():
            f = self.model.encode(batch, "entity")
            vectors = self.model.retrieval_vectors(f).float()  # [B,D]
            cache = self.model.entity_cache(f)
        out = {}
        for key, value in cache.items():
            arr = value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
            out[key] = arr.astype(self.cache_dtype) if value.is_floating_point() else arr
        out["vector"] = vectors.cpu().numpy()  # u_e in fp32, exactly what Milvus holds: rerank reads it here
        return vectors.cpu().numpy(), out

    def encode_prepared(self, prep: PreparedBatch) -> EncodedEntities:
        """Model stage. A batch that fails is retried row by row so one bad row never loses the others."""
        try:
            vectors, cache = self._encode_inputs(prep.inputs)
            keep, failed = list(range(len(prep.ids))), []
        except Exception:
            keep, failed, parts = [], [], []
            for i in range(len(prep.ids)):
                try:
                    parts.append(self._encode_inputs({k: v[i : i + 1] for k, v in prep.inputs.items()}))
                    keep.append(i)
                except Exception as exc:
                    failed.append(f"{prep.ids[i]}: {type(exc).__name__}: {exc}")
            vectors = (
                np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, self.retrieval_dim), "f4")
            )
            cache = {k: np.concatenate([p[1][k] for p in parts]) for k in (parts[0][1] if parts else {})}
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():  # a NaN vector would poison inner-product search; drop the row and say why
            failed += [f"{prep.ids[keep[i]]}: non-finite vector" for i in np.flatnonzero(bad)]
            rows = np.flatnonzero(~bad)
            keep = [keep[i] for i in rows]
            vectors = vectors[rows]
            cache = {k: v[rows] for k, v in cache.items()}
        return EncodedEntities(
            ids=[prep.ids[i] for i in keep],
            vectors=vectors.astype(np.float32),
            cache=cache,
            has_image=np.asarray(prep.inputs["image_mask"], dtype=bool)[keep],
            image_errors=prep.image_errors,
            names=[prep.names[i] for i in keep],
            content_hashes=[prep.content_hashes[i] for i in keep],
            failed=failed,
        )

    def encode_entities(self, rows: list[dict]) -> EncodedEntities:
        """Entity rows (entity_id, name, description, image_uris or a ready `image`) -> vectors + cache."""
        parts = []
        for start in range(0, len(rows), self.cfg.batch_size):
            prep = prepare_entities(rows[start : start + self.cfg.batch_size], self.processor, self.loader)
            parts.append(self.encode_prepared(prep))
        return concat_encoded(parts, self.retrieval_dim)

    def encode_mentions(self, rows: list[dict]):
        """Mention rows (mention, context, image_uri or `image`, optional desc) -> (SideFeatures, vectors [B,D])."""
        texts = [
            mention_text(r.get("mention") or "", r.get("context") or "", r.get("desc") or "") for r in rows
        ]
        images = []
        for row in rows:
            if "image" in row:
                images.append(row["image"])
            else:
                images.append(self.loader.load(row.get("image_uri"))[0] if self.loader else None)
        batch = {k: v.to(self.device) for k, v in self.processor(texts, images).items()}
        with torch.inference_mode(), self._autocast():
            f = self.model.encode(batch, "mention")
        f = to_float32(f)
        return f, self.model.retrieval_vectors(f)


def concat_encoded(parts: list[EncodedEntities], dim: int) -> EncodedEntities:
    """Join batch results in order (one shard's worth)."""
    if not parts:
        return EncodedEntities([], np.zeros((0, dim), np.float32), {}, np.zeros(0, bool))
    full = [p for p in parts if p.ids] or parts[:1]  # a batch whose rows all failed has no cache arrays
    keys = [k for k in full[0].cache if all(k in p.cache for p in full)]
    return EncodedEntities(
        ids=[i for p in parts for i in p.ids],
        vectors=np.concatenate([p.vectors for p in full]),
        cache={k: np.concatenate([p.cache[k] for p in full]) for k in keys},
        has_image=np.concatenate([p.has_image for p in parts]),
        image_errors=[e for p in parts for e in p.image_errors],
        names=[n for p in parts for n in p.names],
        content_hashes=[h for p in parts for h in p.content_hashes],
        failed=[f for p in parts for f in p.failed],
    )
