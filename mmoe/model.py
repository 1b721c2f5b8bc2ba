"""MMoE: CLIP features -> text unit + vision unit + cross unit -> score (shared reference sections 1 and 2).

score = (S_text + S_img + S_cross) / 3 with S_text = (g2l_t + g2g_t)/2, S_img = (g2l_i + g2g_i)/2,
S_cross = (<m_ti, e_ti> + <m_it, e_it>)/2. With the per-token gate every side's features depend on that side
only, so the score splits exactly (reference section 2):

    score(m, e) = <u_m, u_e> / 6 + (g2l_text(m, e) + g2l_img(m, e)) / 6,
    u = concat(text_cls [P], image_cls [d], cross_ti [d], cross_it [d])          (``retrieval_vectors``)

``u_e`` goes into a maximum-inner-product index; the g2l terms need only a small per-entity cache
(``entity_cache``: cls_moe and the query projections of the MoE'd tokens), so reranking K candidates never
re-runs the entity encoder. ``score_shared`` (one candidate set for all mentions, the exhaustive protocol),
``score_candidates`` (K own candidates per mention, rerank) and ``forward`` (training: encode both sides, score
directly) give the same numbers for the same pairs.

With ``gate: reference`` (official gate, batch-dependent features) caching is meaningless: ``entity_cache``,
``score_shared`` and ``score_candidates`` raise; use ``forward`` / ``score`` on the batches of the paper's
protocol. Reference mode also drops the padding masks, as the official matcher has none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import CLIPConfig

from mmoe.config import MMoEConfig
from mmoe.features import BackboneFeatures, CLIPFeatures, zero_missing_pixels
from mmoe.inter import CrossSide, CrossUnit, Side
from mmoe.intra import IntraSide, IntraUnit
from mmoe.processor import check_text_length

CACHE_KEYS = ("text_cls_moe", "text_query", "text_mask", "image_cls_moe", "image_query")


@dataclass
class SideFeatures:
    """Everything the matcher needs from one side (a batch of mentions or of entities)."""

    text_cls: Tensor  # [B,P] LayerNorm(text_embeds), g2g text
    image_cls: Tensor  # [B,d] g2g image
    text: IntraSide  # text unit MoE output (cls_moe [B,d], tokens_moe [B,L,d], mask [B,L])
    image: IntraSide  # vision unit MoE output (cls_moe [B,d], tokens_moe [B,V,d], mask [B,V])
    cross: CrossSide  # cross unit vectors (text_image [B,d], image_text [B,d])
    has_image: Tensor  # [B] bool
    aux_loss: Tensor  # [] mean load-balancing loss of this side's MoE calls
    gate_weights: dict[str, Tensor] | None = None  # per MoE layer [B,S,E] when encode(return_gates=True)


@dataclass
class ScoreOutput:
    scores: Tensor  # [B,N] (S_text + S_img + S_cross) / 3
    text: Tensor  # [B,N] S_text
    image: Tensor  # [B,N] S_img
    cross: Tensor  # [B,N] S_cross
    aux_loss: Tensor | None = None  # [] mean of both sides' load-balancing losses (forward only)


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply `fn` to every tensor inside nested feature dataclasses / dicts / lists / tuples (a copy)."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def tensor_leaves(obj: Any) -> list[Tensor]:
    """The tensors of `map_tensors`' walk, in its order (`map_tensors(template, next(iter(leaves)))` rebuilds)."""
    found: list[Tensor] = []
    map_tensors(obj, lambda t: found.append(t) or t)
    return found


def to_float32(obj: Any) -> Any:
    """Floating tensors of (nested) features back to float32, e.g. after autocast."""
    return map_tensors(obj, lambda t: t.float() if t.is_floating_point() else t)


def select_rows(obj, index):
    """Row-select every tensor of a (nested) feature dataclass, e.g. ``select_rows(f, slice(0, 8))``."""
    return map_tensors(obj, lambda t: t if t.dim() == 0 else t[index])


class MMoEModel(nn.Module):
    """Multi-level MoE matcher on a shared CLIP backbone."""

    def __init__(self, config: MMoEConfig, clip_config: CLIPConfig):
        super().__init__()
        vision = clip_config.vision_config
        check_text_length(config.text_max_tokens, vision.image_size, vision.patch_size)
        if clip_config.text_config.max_position_embeddings < config.text_max_tokens:
            raise ValueError(
                f"text_max_tokens={config.text_max_tokens} exceeds the CLIP text positions "
                f"({clip_config.text_config.max_position_embeddings})"
            )
        self.config = config
        self.clip_config = clip_config
        self.text_dim = clip_config.projection_dim  # P
        self.retrieval_dim = self.text_dim + 3 * config.dim  # D = P + 3d (800 for ViT-B/32, d=96)
        self.features = CLIPFeatures(config, clip_config)
        self.text_unit = IntraUnit(self.text_dim, config)
        self.image_unit = IntraUnit(config.dim, config)
        self.cross_unit = CrossUnit(self.text_dim, config)

    @property
    def reference_gate(self) -> bool:
        return self.config.gate == "reference"

    def _require_token_gate(self, what: str) -> None:
        if self.reference_gate:
            raise RuntimeError(
                f"{what} needs gate='token': with gate='reference' (the official gate) a record's features "
                "depend on the other records in its batch, so they cannot be cached or scored apart. "
                "Use model(mention_batch, entity_batch) on the paper's exhaustive tiles instead."
            )

    # -- one side --------------------------------------------------------------------------------------------
    def backbone(self, batch: dict[str, Tensor]) -> BackboneFeatures:
        """CLIP features of one batch: per record, independent of the batch (the gates come later)."""
        image_mask = batch.get("image_mask")
        if image_mask is None:
            image_mask = torch.ones(
                batch["input_ids"].shape[0], dtype=torch.bool, device=batch["input_ids"].device
            )
        pixels = zero_missing_pixels(batch["pixel_values"], image_mask)
        return self.features(batch["input_ids"], batch["attention_mask"], pixels, image_mask)

    def encode(self, batch: dict[str, Tensor], side: Side, return_gates: bool = False) -> SideFeatures:
        """Features of one side: `backbone` then `match_features` (both sides share the backbone and MoEs).

        ``side`` ("mention" or "entity") matters with ``gate: reference`` only, where the cross unit's tanh gate
        reads different inputs on the two sides as the official code does (mmoe.inter).
        """
        return self.match_features(self.backbone(batch), side, return_gates)

    def match_features(self, f: BackboneFeatures, side: Side, return_gates: bool = False) -> SideFeatures:
        """The MoE units on already-encoded backbone features of one batch of one side.

        Apart from `backbone` so that the reference protocol computes CLIP features once per record and
        re-runs only the batch-dependent MoE per tile.
        """
        text, image = self.intra_features(f)
        cross = self.cross_features(f, side)
        gates = None
        if return_gates:
            gates = {
                "text_intra": text.gate_weights,  # [B,1+L,E]
                "image_intra": image.gate_weights,  # [B,1+V,E]
                "cross_text": cross.gate_text,  # [B,1+V,E] x = [text_cls; image tokens]
                "cross_image": cross.gate_image,  # [B,1+L,E] x = [image_cls; text tokens]
            }
        aux = (text.aux_loss + image.aux_loss + cross.aux_loss) / 3
        return SideFeatures(f.text_cls, f.image_cls, text, image, cross, f.has_image, aux, gates)

    def _text_mask(self, f: BackboneFeatures) -> Tensor:
        return torch.ones_like(f.text_mask) if self.reference_gate else f.text_mask  # [B,L]

    def intra_features(self, f: BackboneFeatures) -> tuple[IntraSide, IntraSide]:
        """Units 1 and 2 (text, vision): they feed only the g2l terms, i.e. the rerank, not the retrieval."""
        image_mask_tokens = torch.ones(
            f.image_tokens.shape[:2], dtype=torch.bool, device=f.image_tokens.device
        )
        text = self.text_unit.encode(f.text_cls, f.text_tokens, self._text_mask(f))
        return text, self.image_unit.encode(f.image_cls, f.image_tokens, image_mask_tokens, ~f.has_image)

    def cross_features(self, f: BackboneFeatures, side: Side) -> CrossSide:
        """Unit 3 (cross-modal): two of the four parts of the retrieval vector."""
        text_mask = self._text_mask(f)
        return self.cross_unit.encode(
            f.text_cls, f.text_tokens, text_mask, f.image_cls, f.image_tokens, side, ~f.has_image
        )

    def retrieval_vectors(self, f: SideFeatures) -> Tensor:
        """u = concat(text_cls, image_cls, cross_ti, cross_it) [B, P+3d]; score = <u_m,u_e>/6 + g2l terms/6."""
        return torch.cat([f.text_cls, f.image_cls, f.cross.text_image, f.cross.image_text], dim=-1)

    def entity_retrieval_vectors(self, f: BackboneFeatures) -> Tensor:
        """u_e [B,D] of entities without units 1 and 2, which feed only the rerank cache (`entity_cache_of`):
        retrieval needs every entity's u_e, the exact rerank only the retrieved entities' caches."""
        self._require_token_gate("entity_retrieval_vectors")
        cross = self.cross_features(f, "entity")
        return torch.cat([f.text_cls, f.image_cls, cross.text_image, cross.image_text], dim=-1)

    def entity_cache_of(self, f: BackboneFeatures) -> dict[str, Tensor]:
        """`entity_cache` from backbone features, running units 1 and 2 only (no cross unit)."""
        self._require_token_gate("entity_cache_of")
        return self._cache(*self.intra_features(f))

    def entity_cache(self, f: SideFeatures) -> dict[str, Tensor]:
        """Per-entity rerank features (row-aligned, safetensors-storable): the inputs of the two g2l terms."""
        self._require_token_gate("entity_cache")
        return self._cache(f.text, f.image)

    def _cache(self, text: IntraSide, image: IntraSide) -> dict[str, Tensor]:
        return {
            "text_cls_moe": text.cls_moe,  # [N,d]
            "text_query": self.text_unit.entity_queries(text),  # [N,L,d]
            "text_mask": text.mask,  # [N,L] bool
            "image_cls_moe": image.cls_moe,  # [N,d]
            "image_query": self.image_unit.entity_queries(image),  # [N,V,d]
        }

    # -- scoring ---------------------------------------------------------------------------------------------
    def _split(self, vectors: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p, d = self.text_dim, self.config.dim
        if vectors.shape[-1] != self.retrieval_dim:
            raise ValueError(f"entity vectors have {vectors.shape[-1]} dims, expected {self.retrieval_dim}")
        return (
            vectors[..., :p],
            vectors[..., p : p + d],
            vectors[..., p + d : p + 2 * d],
            vectors[..., p + 2 * d :],
        )

    @staticmethod
    def _combine(g2g_t, g2l_t, g2g_i, g2l_i, ti, it, aux_loss=None) -> ScoreOutput:
        text = (g2l_t + g2g_t) / 2
        image = (g2l_i + g2g_i) / 2
        cross = (ti + it) / 2
        return ScoreOutput((text + image + cross) / 3, text, image, cross, aux_loss)

    def _g2l(self, m: SideFeatures, cache: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Both g2l terms; cache tensors lead with [1,N] (shared) or [B,K] (own candidates)."""
        k_t, v_t = self.text_unit.mention_keys_values(m.text)
        k_i, v_i = self.image_unit.mention_keys_values(m.image)
        image_q_mask = torch.ones(cache["image_query"].shape[:-1], dtype=torch.bool, device=k_i.device)
        g2l_t = self.text_unit.g2l(
            cache["text_query"], cache["text_mask"], cache["text_cls_moe"], k_t, v_t, m.text.mask
        )
        g2l_i = self.image_unit.g2l(
            cache["image_query"], image_q_mask, cache["image_cls_moe"], k_i, v_i, m.image.mask
        )
        return g2l_t, g2l_i

    def score_shared(
        self, m: SideFeatures, entity_vectors: Tensor, entity_cache: dict[str, Tensor]
    ) -> ScoreOutput:
        """Mentions [B] against one shared candidate set [N] -> [B,N]. Memory ~ B*N*L*L: chunk N."""
        self._require_token_gate("score_shared")
        e_t, e_i, e_ti, e_it = (x.to(m.text_cls.dtype) for x in self._split(entity_vectors))  # [N,.]
        cache = {k: entity_cache[k].unsqueeze(0) for k in CACHE_KEYS}  # [1,N,...]
        g2l_t, g2l_i = self._g2l(m, cache)
        return self._combine(
            m.text_cls @ e_t.T,
            g2l_t,
            m.image_cls @ e_i.T,
            g2l_i,
            m.cross.text_image @ e_ti.T,
            m.cross.image_text @ e_it.T,
        )

    def score_candidates(
        self, m: SideFeatures, cand_vectors: Tensor, cand_cache: dict[str, Tensor]
    ) -> ScoreOutput:
        """Each mention against its own K candidates: cand_vectors [B,K,D], cache [B,K,...] -> [B,K]."""
        self._require_token_gate("score_candidates")
        e_t, e_i, e_ti, e_it = (x.to(m.text_cls.dtype) for x in self._split(cand_vectors))  # [B,K,.]
        g2l_t, g2l_i = self._g2l(m, {k: cand_cache[k] for k in CACHE_KEYS})

        def dot(a: Tensor, b: Tensor) -> Tensor:
            return torch.einsum("bd,bkd->bk", a, b)  # [B,K]

        return self._combine(
            dot(m.text_cls, e_t),
            g2l_t,
            dot(m.image_cls, e_i),
            g2l_i,
            dot(m.cross.text_image, e_ti),
            dot(m.cross.image_text, e_it),
        )

    def score(self, m: SideFeatures, e: SideFeatures) -> ScoreOutput:
        """The straightforward matcher on two encoded sides -> [B,N] (works for both gates)."""
        query_t = self.text_unit.entity_queries(e.text).unsqueeze(0)  # [1,N,L,d]
        query_i = self.image_unit.entity_queries(e.image).unsqueeze(0)  # [1,N,V,d]
        k_t, v_t = self.text_unit.mention_keys_values(m.text)
        k_i, v_i = self.image_unit.mention_keys_values(m.image)
        g2l_t = self.text_unit.g2l(query_t, e.text.mask[None], e.text.cls_moe[None], k_t, v_t, m.text.mask)
        g2l_i = self.image_unit.g2l(
            query_i, e.image.mask[None], e.image.cls_moe[None], k_i, v_i, m.image.mask
        )
        return self._combine(
            m.text_cls @ e.text_cls.T,
            g2l_t,
            m.image_cls @ e.image_cls.T,
            g2l_i,
            m.cross.text_image @ e.cross.text_image.T,
            m.cross.image_text @ e.cross.image_text.T,
            aux_loss=(m.aux_loss + e.aux_loss) / 2,
        )

    def forward(self, mention_batch: dict[str, Tensor], entity_batch: dict[str, Tensor]) -> ScoreOutput:
        """Training path: encode both sides, score every mention against every entity -> [B,N] + aux_loss."""
        return self.score(self.encode(mention_batch, "mention"), self.encode(entity_batch, "entity"))
