"""Feature extraction on the shared CLIP backbone (shared reference section 1, "Features per record").

| name         | from CLIP                                                    | shape    |
|--------------|--------------------------------------------------------------|----------|
| text_cls     | ``text_embeds`` (projected EOS token, L2-normalised)          | [B,P]    |
| text_tokens  | text ``last_hidden_state``                                    | [B,L,Ht] |
| image_cls    | ``image_embeds`` (L2-normalised) -> Linear(P -> d)            | [B,d]    |
| image_tokens | vision ``last_hidden_state`` (CLS + patches, pre post-LN) -> Linear(Hv -> d) | [B,V,d] |

Each of the four gets a LayerNorm before the matcher (official MMoEMatcher). The text MoE reads
[text_cls; text_tokens], so the CLIP projection width P must equal the text width Ht (512 = 512 in ViT-B/32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel

from mmoe.config import MMoEConfig, TinyCLIPConfig
from mmoe.processor import SPECIAL_TOKENS


@dataclass
class BackboneFeatures:
    text_cls: Tensor  # [B,P] LayerNorm(text_embeds)
    text_tokens: Tensor  # [B,L,Ht]
    text_mask: Tensor  # [B,L] bool, False on padding
    image_cls: Tensor  # [B,d]
    image_tokens: Tensor  # [B,V,d]
    has_image: Tensor  # [B] bool; records without an image were encoded from zero pixels


class CLIPFeatures(nn.Module):
    """CLIP backbone + the two image projections + the four LayerNorms."""

    def __init__(self, config: MMoEConfig, clip_config: CLIPConfig):
        super().__init__()
        proj = clip_config.projection_dim
        text_width = clip_config.text_config.hidden_size
        vision_width = clip_config.vision_config.hidden_size
        if proj != text_width:
            raise ValueError(
                f"CLIP projection_dim {proj} != text hidden_size {text_width}: MMoE's text MoE concatenates "
                "the projected text_cls with the text tokens (reference section 1, unit 1)"
            )
        self.clip = CLIPModel(clip_config)
        self.image_cls_proj = nn.Linear(proj, config.dim)
        self.image_tokens_proj = nn.Linear(vision_width, config.dim)
        self.text_cls_norm = nn.LayerNorm(proj)
        self.text_tokens_norm = nn.LayerNorm(text_width)
        self.image_cls_norm = nn.LayerNorm(config.dim)
        self.image_tokens_norm = nn.LayerNorm(config.dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor, image_mask: Tensor):
        """Pixels of records without an image are zero (``zero_missing_pixels``, applied by the caller)."""
        pixels, image_row = self.distinct_images(pixel_values, image_mask)
        out = self.clip(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels)
        image_cls = self.image_cls_norm(self.image_cls_proj(out.image_embeds))  # [n,d]
        image_tokens = self.image_tokens_norm(
            self.image_tokens_proj(out.vision_model_output.last_hidden_state)
        )  # [n,V,d]
        if image_row is not None:  # back to one row per record
            image_cls = image_cls.index_select(0, image_row)  # [B,d]
            image_tokens = image_tokens.index_select(0, image_row)  # [B,V,d]
        return BackboneFeatures(
            text_cls=self.text_cls_norm(out.text_embeds),  # [B,P]
            text_tokens=self.text_tokens_norm(out.text_model_output.last_hidden_state),  # [B,L,Ht]
            text_mask=attention_mask.bool(),  # [B,L]
            image_cls=image_cls,  # [B,d]
            image_tokens=image_tokens,  # [B,V,d]
            has_image=image_mask.bool(),  # [B]
        )

    def distinct_images(self, pixel_values: Tensor, image_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """At inference, the records without an image share one vision pass on the zero image.

        The vision side of a record reads its pixels only, so each of them gets exactly that pass's features;
        in a names-only KB this skips the vision tower for all but one record per batch. Returns the pixels
        to encode [n,C,H,W] and each record's row among them [B] (None: every record is encoded).
        Training encodes every record (its graph stays the plain batch one).
        """
        missing = ~image_mask.bool()  # [B]
        if self.training or int(missing.sum()) < 2:
            return pixel_values, None
        keep = ~missing | (missing.cumsum(0) == 1)  # the images and the first zero image, in order
        row = keep.long().cumsum(0) - 1  # [B] position among the kept rows
        first_missing = row[missing.nonzero()[0, 0]]
        return pixel_values[keep], torch.where(missing, first_missing, row)


def tiny_clip_config(tiny: TinyCLIPConfig, text_max_tokens: int, vocab_size: int) -> CLIPConfig:
    """A random-weight CLIP config from ``TinyCLIPConfig``; token ids match the tiny word-level tokenizer."""
    common = dict(
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        projection_dim=tiny.projection_dim,
    )
    text = dict(
        common,
        vocab_size=vocab_size,
        max_position_embeddings=text_max_tokens,
        pad_token_id=SPECIAL_TOKENS["[PAD]"],
        bos_token_id=SPECIAL_TOKENS["[BOS]"],
        eos_token_id=SPECIAL_TOKENS["[EOS]"],  # pooled token = first [EOS] (not 2: see processor.py)
    )
    vision = dict(common, image_size=tiny.image_size, patch_size=tiny.patch_size, num_channels=3)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=tiny.projection_dim)


def zero_missing_pixels(pixel_values: Tensor, image_mask: Tensor) -> Tensor:
    """Official behaviour: a record without a readable image is encoded from an all-zero image tensor."""
    return torch.where(image_mask.view(-1, 1, 1, 1).bool(), pixel_values, torch.zeros_like(pixel_values))
