"""Typed configuration of the MMoE model (paper defaults; see shared reference section 1).

Pure data: no I/O, no device choice. `MMoEConfig` travels inside every checkpoint (config.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TinyCLIPConfig:
    """A small random-weight CLIP for tests and the offline quickstart (no download).

    `image_size / patch_size` fixes the vision token count; MMoE's cross-modal gate pairs text token i with
    vision token i, so the text length is derived from it (reference section 1, cross unit).
    """

    hidden_size: int = 64  # text and vision transformer width
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    projection_dim: int = 64  # CLIP joint space (512 in ViT-B/32)
    image_size: int = 32
    patch_size: int = 8  # (32/8)^2 = 16 patches + CLS = 17 vision tokens = text length
    vocab_size: int = 4096  # word-level tokenizer built from the KB's own text


@dataclass
class MMoEConfig:
    """MMoE hyper-parameters; defaults are the official code's (WikiMEL preset)."""

    dim: int = 96  # shared matching dimension d (official code: 96)
    num_experts: int = 4  # experts per switch MoE
    top_k: int = 3  # experts kept per token: WikiMEL 3, RichpediaMEL 4, WikiDiverse 2
    expert_hidden_mult: int = 4  # each expert: Linear(dim -> 4 dim) -> GELU -> Linear(4 dim -> out)
    gate: str = (
        "token"  # "token" (per-token softmax gate, ours) | "reference" (official gate, reproduction aid)
    )
    aux_loss_weight: float = 0.0  # Switch load-balancing loss weight; 0 as in the paper
    capacity_factor: float | None = None  # None: no token dropping, keeps scores batch-independent
    text_max_tokens: int = (
        17  # must equal the vision token count: 17 for the tiny CLIP, 50 for ViT-B/32 at 224
    )
    loss_weights: list[float] = field(
        default_factory=lambda: [1.0, 1.0, 1.0, 1.0]
    )  # total, text, image, cross
    dropout: float = 0.0
