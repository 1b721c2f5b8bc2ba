"""One record's side features as a TorchScript trace of `MMoEModel.encode`: the served mention's fast path.

A served mention is a batch of one: with the tiny model its CPU time is mostly per-op Python and module
overhead (HF's CLIP wrappers, nn.Module calls; ~600 small ops), not arithmetic. A trace runs the same ops in
TorchScript's interpreter, without that overhead (the encoder's forward 4.7 -> 2.1 ms; bench_serve's encode
stage 6.5 -> 3.9 ms). torch.jit is deprecated upstream, but its successors do not fit here: an exported
program's module runs Python per op (8.3 ms), `torch.compile` took 38 s a shape on 2 cores. Where tracing
fails (a model, a torch without jit) `build` returns None and eager serves.

Why a trace is exact at batch one, and only there: the Python decisions it freezes are, for a single record,
the same for every input. They are shapes (the text is always padded to `text_max_tokens`, pixels are always
`image_size`), the grad mode (traced and run without grad), and the inference-only "records sharing the zero
image" shortcuts (`distinct_images`, `same_as_for_missing_images`), which need two or more records. The
routing itself (top-k gates, the routed experts' `nonzero`) is recorded as tensor ops, so it follows the
input. `build` checks the trace against eager `encode` on a second record (other text length, no image)
and returns None where they differ. Eager stays the path for batches, explanations (gate weights), autocast
and the reference gate (batch-dependent by design). The model must not change after `build`: weights that
the trace folded in (the stacked experts) would go stale; a serving encoder's model is read-only.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor, nn

from mmoe.model import MMoEModel, SideFeatures, map_tensors, tensor_leaves
from mmoe.processor import MMoEProcessor

log = logging.getLogger("mmoe.traced")
INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_mask")


class _Flat(nn.Module):
    """`encode` with positional tensors in and a flat tuple of tensors out (what a trace can carry)."""

    def __init__(self, model: MMoEModel, side: str):
        super().__init__()
        self.model, self.side = model, side

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tuple(tensor_leaves(self.model.encode(dict(zip(INPUTS, tensors)), self.side)))


class TracedSide:
    """`model.encode(batch, side)` for a batch of exactly one record, from a checked trace."""

    def __init__(self, graph: torch.jit.ScriptModule, template: SideFeatures):
        self.graph = graph
        self.template = template  # eager output of the trace's probe: the structure to rebuild

    @classmethod
    def build(cls, model: MMoEModel, processor: MMoEProcessor, side: str, device: str) -> TracedSide | None:
        """Trace on a probe record with an image, check on one without; None if the model is not traceable."""
        if model.training or model.reference_gate:
            return None
        size = processor.image_size
        probe = _inputs(processor, ["probe"], [_gray(size)], device)
        check = _inputs(processor, ["a longer probe mention, other words"], [None], device)
        flat = _Flat(model, side).eval()
        with torch.no_grad(), warnings.catch_warnings():
            # the Python decisions a trace freezes are listed above and checked below; torch.jit's own
            # deprecation is discussed there too
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                template = model.encode(dict(zip(INPUTS, probe)), side)
                graph = torch.jit.trace(flat, probe, check_trace=False)
                eager_of = {"probe": tensor_leaves(template), "check": flat(*check)}  # eager once each
                runs = (
                    ("probe", probe),
                    ("check", check),
                    ("probe", probe),
                )  # the executor specialises early
                for name, inputs in runs:
                    eager, traced = eager_of[name], graph(*inputs)
                    if len(eager) != len(traced) or not all(_same(a, b) for a, b in zip(eager, traced)):
                        raise ValueError("its features differ from eager encode's")
            except Exception as err:  # a model or torch the trace does not fit: eager stays correct
                log.warning("no traced %s encoder (%s): single %ss run eagerly", side, err, side)
                return None
        return cls(graph, template)

    def __call__(self, batch: dict[str, Tensor]) -> SideFeatures:
        if batch["input_ids"].shape[0] != 1:
            raise ValueError(f"a traced side encodes one record, got {batch['input_ids'].shape[0]}")
        leaves = iter(self.graph(*(batch[k] for k in INPUTS)))
        return map_tensors(self.template, lambda _: next(leaves))


def _gray(size: int):
    from PIL import Image

    return Image.new("RGB", (size, size), (128, 96, 64))


def _inputs(processor: MMoEProcessor, texts: list[str], images: list, device: str) -> tuple[Tensor, ...]:
    batch = processor(texts, images)
    return tuple(batch[k].to(device) for k in INPUTS)


def _same(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6))
