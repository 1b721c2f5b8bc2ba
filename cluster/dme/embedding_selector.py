"""The `embedding` selector, the offline default: the candidate whose description embedding is closest.

Cosine similarity between the CLIP text embedding (`text_cls`) of the mention in its sentence
(`mmoe.texts.mention_text(mention, context)`) and of each candidate written as an entity
(`mmoe.texts.entity_text(name, description)`). Both sides go through the same MMoE backbone the linker uses, so
no extra model or network is needed; candidate embeddings are memoised because popular entities recur.
"""

from __future__ import annotations

import torch

from cluster.dme.selectors import NO_CANDIDATES, Item, Selection, Selector, chosen
from mmoe.texts import entity_text, mention_text

MEMO_MAX_ENTRIES = 200_000  # ~50 MB of fp32 at 64 dims; cleared between batches once past it


def text_embedding(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`model.encode(batch, side).text_cls` [B, P] computed by the CLIP text tower alone.

    text_cls depends only on the text (reference section 1: LayerNorm of the projected, L2-normalised EOS
    token), so skipping the vision tower and the MoE units gives the same numbers several times faster.
    Models without that layout go through `encode`.
    """
    features = getattr(model, "features", None)
    clip, norm = getattr(features, "clip", None), getattr(features, "text_cls_norm", None)
    if clip is None or norm is None:
        return model.encode(batch, "mention").text_cls  # text_cls is side-independent
    out = clip.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    embeds = out if isinstance(out, torch.Tensor) else out.pooler_output  # [B, P] projected EOS token
    return norm(embeds / embeds.norm(dim=-1, keepdim=True))


class EmbeddingSelector(Selector):
    """Picks argmax cosine(text_cls(mention in context), text_cls(candidate)) among the candidates."""

    name = "embedding"

    def __init__(self, model, processor, batch_size: int = 64):
        super().__init__()
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self._memo: dict[tuple[str, str], torch.Tensor] = {}

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text_cls [N, P] for text-only records."""
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            batch = self.processor(chunk, [None] * len(chunk))
            batch = {k: v.to(device) for k, v in batch.items()}
            text_cls = text_embedding(self.model, batch).float()  # [b, P]
            out.append(torch.nn.functional.normalize(text_cls, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def _candidate_vectors(self, items: list[Item]) -> None:
        """Fill the memo with every candidate not embedded yet (one batched pass)."""
        if len(self._memo) > MEMO_MAX_ENTRIES:
            self._memo.clear()
        missing: dict[tuple[str, str], str] = {}
        for _, _, candidates in items:
            for c in candidates:
                key = (c.entity_id, c.description)
                if key not in self._memo and key not in missing:
                    missing[key] = entity_text(c.name, c.description)
        if not missing:
            return
        vectors = self.embed(list(missing.values()))
        self._memo.update(zip(missing, vectors))

    def _select_many(self, items: list[Item]) -> list[Selection]:
        todo = [i for i, (_, _, candidates) in enumerate(items) if candidates]
        out = [Selection(None, "", NO_CANDIDATES)] * len(items)
        if not todo:
            return out
        self._candidate_vectors([items[i] for i in todo])
        queries = self.embed([mention_text(items[i][0], items[i][1]) for i in todo])  # [b, P]
        for row, i in enumerate(todo):
            candidates = items[i][2]
            keys = torch.stack([self._memo[(c.entity_id, c.description)] for c in candidates])  # [k, P]
            scores = keys @ queries[row]  # [k] cosine similarities
            out[i] = chosen(candidates, int(torch.argmax(scores)))
        return out
