"""Exact rerank of K retrieved candidates vs exhaustive scoring over the whole KB (shared reference section 2).

Real-size MMoE matcher dims (P = 512, d = 96, L = V = 50 tokens as ViT-B/32) on a small random backbone (the
backbone only encodes the mentions, which both protocols do once). Entity-side rerank features are random
tensors of the real shapes, as the feature cache would hold them. For N = 100k the 10k-row random cache is
swept 10 times (identical compute per row, a tenth of the memory). Each protocol is timed in this one process;
the table reports ms per mention and the ratio exhaustive / rerank. It also checks that the rerank scores equal
the exhaustive scores of the same pairs.

    python3 bench/bench_rerank.py                 # CPU, 4 mentions, N = 10k and 100k, K = 10, 50, 100
    python3 bench/bench_rerank.py --device cuda --mentions 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import CLIPConfig

from mmoe.config import MMoEConfig
from mmoe.model import MMoEModel

P, D_MODEL, TOKENS = 512, 96, 50


def matcher_model(device: str) -> MMoEModel:
    """MMoE with real matcher dims; a 1-layer backbone (text width must equal P = 512)."""
    text = dict(
        hidden_size=P,
        intermediate_size=1024,
        num_hidden_layers=1,
        num_attention_heads=8,
        vocab_size=1000,
        max_position_embeddings=TOKENS,
        eos_token_id=4,
        bos_token_id=3,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
    )
    clip = CLIPConfig(text_config=text, vision_config=vision, projection_dim=P)
    torch.manual_seed(0)
    return MMoEModel(MMoEConfig(dim=D_MODEL, top_k=3, text_max_tokens=TOKENS), clip).to(device).eval()


def mention_batch(n: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (n, TOKENS), generator=g)
    mask = torch.zeros(n, TOKENS, dtype=torch.long)
    for i, length in enumerate(torch.randint(8, TOKENS, (n,), generator=g).tolist()):
        mask[i, :length] = 1
        ids[i, length - 1] = 4  # EOS
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "pixel_values": torch.randn(n, 3, 224, 224, generator=g).to(device),
        "image_mask": torch.ones(n, dtype=torch.bool, device=device),
    }


def random_entities(n: int, device: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(6, TOKENS + 1, (n, 1), generator=g)
    cache = {
        "text_cls_moe": torch.randn(n, D_MODEL, generator=g),
        "text_query": torch.randn(n, TOKENS, D_MODEL, generator=g),
        "text_mask": torch.arange(TOKENS).view(1, -1) < lengths,
        "image_cls_moe": torch.randn(n, D_MODEL, generator=g),
        "image_query": torch.randn(n, TOKENS, D_MODEL, generator=g),
    }
    vectors = torch.randn(n, P + 3 * D_MODEL, generator=g)
    return vectors.to(device), {k: v.to(device) for k, v in cache.items()}


def timed(fn, device: str, repeats: int = 1, warmup=None) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call (the CPU may be shared)."""
    (warmup or fn)()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mentions", type=int, default=4)
    parser.add_argument("--entities", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument(
        "--base", type=int, default=10_000, help="rows of the random cache (swept to reach N)"
    )
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9, help="rerank timings: median of this many calls")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, b = args.device, args.mentions

    model = matcher_model(device)
    vectors, cache = random_entities(args.base, device)
    with torch.inference_mode():
        m = model.encode(mention_batch(b, device), "mention")

        def chunks(n: int, size: int):
            for start in range(0, n, size):
                offset = start % args.base
                yield slice(offset, min(offset + size, args.base, offset + n - start))

        def exhaustive(n: int) -> None:
            for rows in chunks(n, args.chunk):
                _ = model.score_shared(m, vectors[rows], {k: v[rows] for k, v in cache.items()}).scores

        def rerank(k: int) -> torch.Tensor:
            index = torch.randint(0, args.base, (b, k), generator=torch.Generator().manual_seed(k)).to(device)
            return model.score_candidates(m, vectors[index], {n: v[index] for n, v in cache.items()}).scores

        def retrieve(n: int, k: int) -> None:  # exact IP top-K over N in torch (Milvus does this with an ANN)
            u = model.retrieval_vectors(m)
            _ = [torch.topk(u @ vectors[rows].T, k, dim=1) for rows in chunks(n, args.base)]

        # rerank == exhaustive for the same pairs (reference section 2)
        k_check = 50
        index = torch.randint(0, args.base, (b, k_check), generator=torch.Generator().manual_seed(k_check))
        full = torch.cat(
            [
                model.score_shared(m, vectors[r], {k: v[r] for k, v in cache.items()}).scores
                for r in chunks(args.base, args.chunk)
            ],
            dim=1,
        )  # [B,base]
        max_diff = (rerank(k_check) - full.gather(1, index.to(device))).abs().max().item()

        one_chunk = lambda: exhaustive(args.chunk)  # noqa: E731
        exhaustive_s = {n: timed(lambda n=n: exhaustive(n), device, warmup=one_chunk) for n in args.entities}
        rerank_s = {k: timed(lambda k=k: rerank(k), device, repeats=args.repeats) for k in args.ks}
        retrieve_s = {n: timed(lambda n=n: retrieve(n, max(args.ks)), device) for n in args.entities}

    print(
        f"device={device} threads={args.threads} mentions/batch={b} P={P} d={D_MODEL} L=V={TOKENS} "
        f"chunk={args.chunk}; rerank==exhaustive max |diff| = {max_diff}"
    )
    print(
        "exhaustive: " + ", ".join(f"N={n:,}: {1e3 * s / b:.1f} ms/mention" for n, s in exhaustive_s.items())
    )
    print(
        "flat IP top-K retrieval (torch, for scale; Milvus ANN in production): "
        + ", ".join(f"N={n:,}: {1e3 * s / b:.2f} ms/mention" for n, s in retrieve_s.items())
    )
    header = (
        "| K | rerank ms/mention | "
        + " | ".join(f"exhaustive N={n:,} / rerank" for n in args.entities)
        + " |"
    )
    print(header)
    print("|" + "---|" * (2 + len(args.entities)))
    for k, s in rerank_s.items():
        ratios = " | ".join(f"{exhaustive_s[n] / s:,.0f}x" for n in args.entities)
        print(f"| {k} | {1e3 * s / b:.3f} | {ratios} |")


if __name__ == "__main__":
    main()
