"""Entity encoding through the Ray pipeline (CPU prepare tasks -> encoder actors) vs a bare loop, same batches.

    python3 bench/bench_index_pipeline.py                                    # tiny model, CPU, 512 entities
    python3 bench/bench_index_pipeline.py --clip-size vit-b32 --device cuda --dtype bf16 --entities 20000

Rows, all measured in this one run on the same batches of synthetic sample-KB entities (PNG images on disk):
- `bare loop`: one process: load images + tokenize (prepare_entities), then the model (EntityEncoder), in turn;
- `ray pipeline`: workers.ray_pool.EncodingPool, the path `mel index` takes (prepare tasks overlap the model);
- `model only`: EntityEncoder on already-prepared batches (the ceiling the pipeline can reach).
`ratio` = entities/s / bare-loop entities/s (goal >= 0.9 for the pipeline). Actor start-up and a warm-up
batch are excluded from these timings. Issue 20 then compares, each from nothing (actor start-up included,
since Ray Data starts its pool inside the run):
- `pool`: EncodingPool built and run over every batch;
- `ray data`: the same two stages as Ray Data operators (`map` of 1-CPU prepare tasks -> `map` on an
  ActorPoolStrategy of EntityEncoders), results streamed back to the driver as the pool's are;
- `ray data fuse`: the same, letting Ray Data fuse prepare into the actor (its default when the args match). `--clip-size vit-b32` builds real ViT-B/32 dimensions with random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from kb_builder.config import StorageConfig  # noqa: E402
from mmoe.config import MMoEConfig, TinyCLIPConfig  # noqa: E402
from workers.config import EncoderConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def build_model(clip_size: str, corpus: list[str], out: Path) -> None:
    """Save a random-weight MMoE: the tiny test CLIP, or real ViT-B/32 dimensions (800-d retrieval vectors)."""

    from mmoe.model import MMoEModel
    from mmoe.pretrained import build_tiny_model, save_pretrained, vit_b32_clip_config
    from mmoe.processor import SPECIAL_TOKENS, MMoEProcessor

    if clip_size == "tiny":
        model, processor = build_tiny_model(TinyCLIPConfig(), MMoEConfig(text_max_tokens=17), corpus, seed=0)
    else:
        mmoe_cfg = MMoEConfig(text_max_tokens=50)  # 49 patches + CLS at 224 / 32
        processor = MMoEProcessor.build_tiny(
            TinyCLIPConfig(image_size=224, patch_size=32, vocab_size=49408), 50, corpus
        )
        ids = {
            "pad_token_id": SPECIAL_TOKENS["[PAD]"],
            "bos_token_id": SPECIAL_TOKENS["[BOS]"],
            "eos_token_id": SPECIAL_TOKENS["[EOS]"],
        }
        model = MMoEModel(mmoe_cfg, vit_b32_clip_config(**ids)).eval()
    save_pretrained(out, model, processor)


def sample_rows(n: int, folder: Path) -> list[dict]:
    """n synthetic entities (kb_builder.sample_kb) with absolute image paths."""
    from kb_builder.sample_kb import write_sample_kb

    write_sample_kb(folder, n_entities=n, n_mentions=10, seed=0)
    rows = []
    for line in (folder / "entities.jsonl").read_text().splitlines():
        r = json.loads(line)
        image = str(folder / r["image"]) if r.get("image") else None
        rows.append(
            {
                "entity_id": r["id"],
                "name": r["name"],
                "description": r.get("description", ""),
                "image_uris": [image] if image else [],
                "content_hash": "",
            }
        )
    return rows


def pool_cold_run(batches, model_dir: Path, enc_cfg, storage_cfg, roots: list[str]) -> tuple[int, float]:
    """EncodingPool from nothing: actor start-up + every batch -> (entities, seconds)."""
    from workers.ray_pool import EncodingPool

    start = time.perf_counter()
    pool = EncodingPool(model_dir, enc_cfg, storage_cfg, roots)
    done = sum(len(r.encoded.ids) for r in pool.run(((("b", i), b) for i, b in enumerate(batches))))
    seconds = time.perf_counter() - start
    pool.close()
    return done, seconds


def ray_data_run(
    batches, model_dir: Path, enc_cfg, storage_cfg, roots: list[str], fuse: bool
) -> tuple[int, float]:
    """The same batches through Ray Data from nothing (planning, actor start-up, every batch) -> (entities, s).

    Ray Data fuses a task map into the actor map after it when their remote args match, so the actor would
    prepare its own batches (no overlap); `fuse=False` keeps prepare as separate 1-CPU tasks, as the pool does
    (a `ray_remote_args_fn` is what stops the fusion; Ray deprecates it for 2.64)."""
    import ray

    from workers.encoder import EntityEncoder
    from workers.ray_pool import prepare_batch_task

    class Encode:  # the actor body, as EncoderWorker
        def __init__(self):
            self.encoder = EntityEncoder(model_dir, enc_cfg)

        def __call__(self, item: dict) -> dict:
            return {"key": item["key"], "encoded": self.encoder.encode_prepared(item["prep"])}

    def prepare(item: dict) -> dict:
        prep = prepare_batch_task(item["rows"], str(model_dir), enc_cfg, storage_cfg, roots)
        return {"key": item["key"], "prep": prep}

    start = time.perf_counter()
    items = [{"key": i, "rows": b} for i, b in enumerate(batches)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(prepare, num_cpus=1) if fuse else ds.map(prepare, ray_remote_args_fn=lambda: {"num_cpus": 1})
    ds = ds.map(
        Encode,
        compute=ray.data.ActorPoolStrategy(size=enc_cfg.num_actors),
        num_cpus=enc_cfg.num_cpus_per_actor,
        num_gpus=enc_cfg.num_gpus_per_actor,
    )
    done = sum(len(out["encoded"].ids) for out in ds.iter_rows())  # back in the driver, as the pool's
    return done, time.perf_counter() - start


def row(label: str, n: int, images: int, seconds: float, base: float | None) -> str:
    rate = n / seconds
    ratio = f"{rate / base:.2f}" if base else "1.00"
    return f"{label:>13} | {n:>8} | {seconds:>8.2f} | {rate:>10.1f} | {images / seconds:>9.1f} | {ratio:>5}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--clip-size", choices=["tiny", "vit-b32"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    parser.add_argument("--num-actors", type=int, default=1)
    parser.add_argument("--gpus-per-actor", type=float, default=1.0, help="with --device cuda")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--batches-in-flight", type=int, default=0, help="per actor (0 = CPU count, >= 2)")
    parser.add_argument("--num-cpus", type=int, default=0, help="local Ray CPUs (0 = all)")
    parser.add_argument("--model-only-batches", type=int, default=8)
    args = parser.parse_args(argv)

    import ray
    import torch

    from workers.encoder import EntityEncoder, prepare_entities
    from workers.images import ImageLoader
    from workers.ray_pool import EncodingPool

    cpus = args.num_cpus or os.cpu_count() or 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    t0 = time.perf_counter()
    rows = sample_rows(args.entities, tmp / "kb")
    corpus = [r["name"] for r in rows] + [r["description"] for r in rows]
    build_model(args.clip_size, corpus, tmp / "model")
    print(f"setup: {len(rows)} entities + {args.clip_size} model in {time.perf_counter() - t0:.1f} s")

    enc_cfg = EncoderConfig(
        batch_size=args.batch_size,
        num_actors=args.num_actors,
        dtype=args.dtype,
        num_gpus_per_actor=args.gpus_per_actor if args.device == "cuda" else 0.0,
        num_cpus_per_actor=args.cpus_per_actor,
        batches_in_flight=args.batches_in_flight or max(2, cpus),
    )
    storage_cfg = StorageConfig(root=str(tmp / "data"), cache_dir=str(tmp / "cache"))
    roots = [str(tmp / "kb")]
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    n_images = sum(1 for r in rows if r["image_uris"])

    # bare loop: same model, same batches, one process; torch threads = the actor's CPU share, for parity
    torch.set_num_threads(max(1, int(args.cpus_per_actor)))
    loader = ImageLoader(enc_cfg, storage_cfg, roots)
    encoder = EntityEncoder(tmp / "model", enc_cfg, device=args.device, loader=loader)
    encoder.encode_prepared(prepare_entities(batches[0], encoder.processor, loader))  # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        encoder.encode_prepared(prepare_entities(batch, encoder.processor, loader))
    if args.device == "cuda":
        torch.cuda.synchronize()
    bare_s = time.perf_counter() - start

    prepared = [prepare_entities(b, encoder.processor, loader) for b in batches[: args.model_only_batches]]
    start = time.perf_counter()
    for prep in prepared:
        encoder.encode_prepared(prep)
    if args.device == "cuda":
        torch.cuda.synchronize()
    model_s = time.perf_counter() - start
    model_n = sum(len(p.ids) for p in prepared)
    model_img = sum(int(p.inputs["image_mask"].sum()) for p in prepared)
    del prepared, encoder

    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    pool = EncodingPool(tmp / "model", enc_cfg, storage_cfg, roots)
    list(pool.run([(("warm", 0), batches[0])]))  # actor start-up and first-batch costs, not timed
    start = time.perf_counter()
    done = sum(len(r.encoded.ids) for r in pool.run(((("b", i), b) for i, b in enumerate(batches))))
    ray_s = time.perf_counter() - start
    device = pool.device
    pool.close()
    cold = {"pool": pool_cold_run(batches, tmp / "model", enc_cfg, storage_cfg, roots)}
    for fuse, label in ((False, "ray data"), (True, "ray data fuse")):
        cold[label] = ray_data_run(batches, tmp / "model", enc_cfg, storage_cfg, roots, fuse)
    ray.shutdown()
    assert done == len(rows), f"pipeline returned {done} of {len(rows)} entities"
    assert all(n == len(rows) for n, _ in cold.values()), f"returned {cold} of {len(rows)} entities"

    print(
        f"\nentity encoding: {args.clip_size}, {len(rows)} entities ({n_images} images), batch {args.batch_size}, "
        f"device {device}, dtype {args.dtype}, {args.num_actors} actor(s) x {args.cpus_per_actor} CPU, "
        f"{cpus} Ray CPUs, bare-loop torch threads {torch.get_num_threads()}"
    )
    header = f"{'mode':>13} | {'entities':>8} | {'seconds':>8} | {'entities/s':>10} | {'images/s':>9} | ratio"
    print(header + "\n" + "-" * len(header))
    base = len(rows) / bare_s
    print(row("bare loop", len(rows), n_images, bare_s, None))
    print(row("ray pipeline", len(rows), n_images, ray_s, base))
    print(row("model only", model_n, model_img, model_s, base))
    print("\nfrom nothing (actor start-up included; issue 20: Ray Data if within 5% of the pool):")
    for label, (n, seconds) in cold.items():
        print(row(label, n, n_images, seconds, base))
    best = max(n / seconds for label, (n, seconds) in cold.items() if label != "pool")
    print(f"best ray data / pool: {best / (cold['pool'][0] / cold['pool'][1]):.3f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
