"""Turns (text, image) records into model inputs (shared reference section 1, "Backbone").

Real checkpoints use the CLIP folder's own tokenizer and image processor. The tiny random-weight CLIP used by
tests and the offline quickstart gets a word-level tokenizer built from the knowledge base's own text (no
download). Text is always padded/truncated to exactly ``text_max_tokens``: the cross unit's gate pairs text
token i with vision token i (reference section 1, unit 3), so the text length must equal the vision token
count; a record without an image gets an all-zero ``pixel_values`` as in the official code.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mmoe.config import TinyCLIPConfig

PROCESSOR_FILE = "mmoe_processor.json"
# Word-level tiny tokenizer: ids are fixed so the tiny CLIP text config can name them. eos is not 2 on
# purpose: transformers' CLIPTextModel falls back to argmax(input_ids) pooling when eos_token_id == 2.
SPECIAL_TOKENS = {"[PAD]": 0, "[UNK]": 1, "[SEP]": 2, "[BOS]": 3, "[EOS]": 4}


def vision_tokens(image_size: int, patch_size: int) -> int:
    """CLS + patches of a ViT: (image_size / patch_size)^2 + 1 (50 for ViT-B/32 at 224)."""
    return (image_size // patch_size) ** 2 + 1


def check_text_length(text_max_tokens: int, image_size: int, patch_size: int) -> None:
    """Raise unless the text length equals the vision token count (cross-modal gate pairs them)."""
    n_vision = vision_tokens(image_size, patch_size)
    if text_max_tokens != n_vision:
        raise ValueError(
            f"text_max_tokens={text_max_tokens} must equal the vision token count {n_vision} "
            f"((image_size {image_size} / patch_size {patch_size})^2 + 1): MMoE's cross-modal gate pairs "
            f"text token i with vision token i. Set mmoe.text_max_tokens={n_vision}."
        )


def _image_processor_class():
    """CLIPImageProcessor needs torchvision in transformers 5; the PIL backend computes the same pixels."""
    if importlib.util.find_spec("torchvision") is None:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor


def build_word_tokenizer(corpus: list[str], vocab_size: int, text_max_tokens: int) -> PreTrainedTokenizerFast:
    """A deterministic word-level tokenizer: the special tokens, then the most frequent words of ``corpus``
    (ties broken by spelling), counted by the `tokenizers` trainer in Rust on every core (a Python loop took
    42-52 s on a 1M-entity KB's corpus, issue 18)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer

    tok = Tokenizer(WordLevel(vocab=dict(SPECIAL_TOKENS), unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+
    trainer = WordLevelTrainer(  # orders words by count, then by spelling, after the special tokens
        vocab_size=max(vocab_size, len(SPECIAL_TOKENS)),
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    texts = (text.replace("[SEP]", " ") for text in corpus)  # the separator is not a word of the corpus
    tok.train_from_iterator(texts, trainer=trainer, length=len(corpus))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 3), ("[EOS]", 4)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        sep_token="[SEP]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=text_max_tokens,
    )


class MMoEProcessor:
    """Tokenizer + image processor with MMoE's fixed text length; ``__call__`` gives one batch."""

    def __init__(self, tokenizer, image_processor, text_max_tokens: int):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.text_max_tokens = text_max_tokens
        crop = image_processor.crop_size or {}
        self.image_size = int(crop.get("height") or image_processor.size.get("shortest_edge"))

    @classmethod
    def build_tiny(cls, tiny: TinyCLIPConfig, text_max_tokens: int, corpus: list[str]) -> MMoEProcessor:
        check_text_length(text_max_tokens, tiny.image_size, tiny.patch_size)
        tokenizer = build_word_tokenizer(corpus, tiny.vocab_size, text_max_tokens)
        image_processor = _image_processor_class()(
            size={"shortest_edge": tiny.image_size},
            crop_size={"height": tiny.image_size, "width": tiny.image_size},
        )
        return cls(tokenizer, image_processor, text_max_tokens)

    @classmethod
    def from_pretrained(cls, path: str | Path, text_max_tokens: int | None = None) -> MMoEProcessor:
        """Load from a local folder (ours or a CLIP checkpoint's); never downloads."""
        path = Path(path)
        meta_file = path / PROCESSOR_FILE
        if text_max_tokens is None:
            if not meta_file.exists():
                raise ValueError(f"{path} has no {PROCESSOR_FILE}: pass text_max_tokens explicitly")
            text_max_tokens = int(json.loads(meta_file.read_text())["text_max_tokens"])
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        image_processor = _image_processor_class().from_pretrained(str(path), local_files_only=True)
        return cls(tokenizer, image_processor, text_max_tokens)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))
        (path / PROCESSOR_FILE).write_text(json.dumps({"text_max_tokens": self.text_max_tokens}, indent=2))

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and attention_mask [B,L], padded to `text_max_tokens` (the cross-modal gate needs L = V)."""
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.text_max_tokens,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    def __call__(
        self,
        texts: list[str],
        images: list[Image.Image | None] | None = None,
        tokens: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """`tokens`: the texts' `tokenize` output, when the caller keeps it (cluster.inputs.BatchBuilder)."""
        images = images if images is not None else [None] * len(texts)
        if len(images) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        input_ids, attention_mask = tokens if tokens is not None else self.tokenize(texts)
        image_mask = torch.tensor([img is not None for img in images], dtype=torch.bool)  # [B]
        size = self.image_size
        pixel_values = torch.zeros(len(texts), 3, size, size)  # [B,3,H,W], zeros where no image
        present = [img.convert("RGB") for img in images if img is not None]
        if present:
            pixels = self.image_processor(images=present, return_tensors="pt")["pixel_values"]
            pixel_values[image_mask] = pixels.to(pixel_values.dtype)
        return {
            "input_ids": input_ids,  # [B,L]
            "attention_mask": attention_mask,  # [B,L]
            "pixel_values": pixel_values,  # [B,3,H,W]
            "image_mask": image_mask,  # [B] bool
        }
