"""Entity encoding throughput with real-size CLIP dims (ViT-B/32, random weights): fp32 vs bf16, MMoE vs bare CLIP.

Model-only (inputs pre-tokenised and pre-processed), so it runs anywhere torch + transformers run — including a GPU
machine without Ray or Milvus. Each row is measured in this one process; ratios compare rows side by side:
- `clip image+text`: the bare `CLIPModel` forward on the same batch (the baseline every encoder pays);
- `mmoe encode`: our entity encoder: CLIP features + every MoE + retrieval vector + rerank cache.
It also times the exact rerank (K candidates) against exhaustive scoring over N entities on the device.

    python3 bench/bench_gpu_encode.py --device cuda --batch 256 --steps 20
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from transformers import CLIPModel

from mmoe.config import MMoEConfig
from mmoe.model import MMoEModel
from mmoe.pretrained import vit_b32_clip_config


def make_batch(n: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 49000, (n, 50), generator=g)
    mask = torch.ones(n, 50, dtype=torch.long)
    mask[:, 30:] = 0  # realistic padding
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "pixel_values": torch.randn(n, 3, 224, 224, generator=g).to(device),
        "image_mask": torch.ones(n, dtype=torch.bool, device=device),
    }


def timed(fn, steps: int, device: str) -> float:
    for _ in range(3):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


print = functools.partial(print, flush=True)  # noqa: A001  (progress visible when piped)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--entities", type=int, default=100_000, help="N for the exhaustive-vs-rerank timing")
    args = parser.parse_args()
    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    clip_cfg = vit_b32_clip_config()
    model = MMoEModel(MMoEConfig(text_max_tokens=50), clip_cfg).to(dev).eval()
    clip = CLIPModel(clip_cfg).to(dev).eval()
    batch = make_batch(args.batch, dev)
    print(
        f"device {dev} ({torch.cuda.get_device_name() if dev.startswith('cuda') else 'cpu'}), batch {args.batch}"
    )

    rows = []
    for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):

        def ctx(dtype=dtype):
            kind = dev.split(":")[0]
            return torch.autocast(kind, dtype=dtype) if dtype else torch.autocast(kind, enabled=False)

        @torch.no_grad()
        def run_clip():
            with ctx():
                clip(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"],
                )

        @torch.no_grad()
        def run_mmoe():
            with ctx():
                f = model.encode(batch, "entity")
                model.retrieval_vectors(f)
                model.entity_cache(f)

        t_clip = timed(run_clip, args.steps, dev)
        t_mmoe = timed(run_mmoe, args.steps, dev)
        rows.append((dtype_name, args.batch / t_clip, args.batch / t_mmoe))

    print(f"\n{'dtype':<6} {'clip img+txt/s':>15} {'mmoe encode/s':>15} {'mmoe/clip':>10}")
    for name, clip_rate, mmoe_rate in rows:
        print(f"{name:<6} {clip_rate:15.1f} {mmoe_rate:15.1f} {mmoe_rate / clip_rate:10.2f}")
    print(f"bf16 speed-up over fp32 (mmoe encode): {rows[1][2] / rows[0][2]:.2f}x")

    # exact rerank of K candidates vs exhaustive scoring of N entities, per mention, on this device (bf16 cache)
    with torch.no_grad(), torch.autocast(dev.split(":")[0], dtype=torch.bfloat16):
        m = model.encode(make_batch(32, dev), "mention")
        e = model.encode(make_batch(64, dev), "entity")
        ev, ec = model.retrieval_vectors(e), model.entity_cache(e)
    reps = max(1, args.entities // 64)
    big_v = ev.float().repeat(reps, 1)
    big_c = {k: v.repeat(reps, *([1] * (v.dim() - 1))) for k, v in ec.items()}
    n = big_v.shape[0]

    @torch.no_grad()
    def exhaustive():
        for s in range(0, n, 8192):
            model.score_shared(m, big_v[s : s + 8192], {k: v[s : s + 8192] for k, v in big_c.items()})

    t_ex = timed(exhaustive, 2, dev) / 32
    print(f"\nexhaustive over N={n}: {t_ex * 1e3:.2f} ms/mention")
    for k in (10, 50, 100):
        cv = big_v[:k].unsqueeze(0).expand(32, -1, -1)
        cc = {key: v[:k].unsqueeze(0).expand(32, *v[:k].shape) for key, v in big_c.items()}
        t_k = timed(lambda cv=cv, cc=cc: model.score_candidates(m, cv, cc), 10, dev) / 32
        print(f"rerank K={k:<4}: {t_k * 1e3:.3f} ms/mention   exhaustive/rerank = {t_ex / t_k:,.0f}x")


if __name__ == "__main__":
    main()
