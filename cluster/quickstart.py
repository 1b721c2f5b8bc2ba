"""`mel quickstart`: the whole system on embedded defaults, end to end, on one machine with no servers.

Sample KB -> Parquet shards -> baseline metrics of the untrained model -> MMoE trained on Ray Train (2 CPU
workers) -> the trained model encodes the KB on Ray actors into Milvus Lite (new collection, alias swap) ->
Hits@k/MRR on the test split, exhaustive and ANN + rerank -> Ray Serve -> test mentions linked over real HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class QuickstartResult:
    entities: int = 0
    mentions: int = 0
    indexed: int = 0
    untrained: dict = field(default_factory=dict)  # protocol -> metrics
    trained: dict = field(default_factory=dict)
    answers: list[dict] = field(default_factory=list)  # one per linked mention: request, gold, top candidates
    model_dir: str = ""
    seconds: dict = field(default_factory=dict)  # step -> wall seconds
    serve_url: str = "http://127.0.0.1:8000"  # where `mel serve` will listen (serve.host / serve.port)

    def summary(self) -> str:
        def h1(metrics: dict) -> str:
            ex = metrics.get("exhaustive", {})
            return f"H@1 {ex.get('hits@1', float('nan')):.3f}  MRR {ex.get('mrr', float('nan')):.3f}"

        total = sum(self.seconds.values())
        lines = [
            "quickstart summary",
            f"  KB: {self.entities} entities, {self.mentions} mentions; indexed {self.indexed} into Milvus",
            f"  untrained: {h1(self.untrained)}",
            f"  trained:   {h1(self.trained)}",
            f"  linked {len(self.answers)} test mentions over HTTP, "
            f"{sum(a['correct'] for a in self.answers)} correct at rank 1",
            f"  model: {self.model_dir}",
            "  time: "
            + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items())
            + f" (total {total:.0f}s)",
            f"  playground: run `mel serve --set serve.checkpoint={self.model_dir}` (same --config/--set as"
            f" this run), then open {self.serve_url}/ui/",
        ]
        return "\n".join(lines)


class _Timer:
    def __init__(self, result: QuickstartResult, step: str):
        self.result, self.step = result, step

    def __enter__(self):
        print(f"\n== {self.step} ==", flush=True)
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.result.seconds[self.step] = time.perf_counter() - self.start


def _pick_demo_mentions(cfg, n: int) -> list[dict]:
    """Test mentions to link over HTTP: half whose name several entities share, half unambiguous."""
    from kb_builder.shards import read_entities, read_mentions
    from kb_builder.storage import Storage

    storage = Storage(cfg.storage)
    entities = read_entities(storage, cfg.kb.name, columns=["entity_id", "name"])
    per_name = entities.group_by("name").len()
    ambiguous = set(per_name.filter(per_name["len"] > 1)["name"].to_list())
    test = read_mentions(storage, cfg.kb.name, split="test").drop_nulls("gold_entity_id")
    rows = sorted(test.to_dicts(), key=lambda r: r["mention_id"])
    for row in rows:
        row["ambiguous"] = row["mention"] in ambiguous
    picked = [r for r in rows if r["ambiguous"]][: n // 2]
    picked += [r for r in rows if not r["ambiguous"]][: n - len(picked)]
    return picked


def link_over_http(url: str, mentions: list[dict], top_k: int = 5) -> list[dict]:
    """POST each mention (with its image as base64 when it has one) to /link; collect the ranked answers."""
    import base64

    import httpx

    answers = []
    with httpx.Client(base_url=url, timeout=60.0) as client:
        for row in mentions:
            body = {"mention": row["mention"], "context": row["context"], "top_k": top_k}
            if row.get("image_uri") and Path(row["image_uri"]).exists():
                body["image"] = base64.b64encode(Path(row["image_uri"]).read_bytes()).decode()
            reply = client.post("/link", json=body)
            reply.raise_for_status()
            candidates = reply.json()["candidates"]
            top = candidates[0]["entity_id"] if candidates else None
            answers.append(
                {
                    "mention": row["mention"],
                    "context": row["context"],
                    "gold": row["gold_entity_id"],
                    "ambiguous": row.get("ambiguous", False),
                    "candidates": candidates,
                    "correct": top == row["gold_entity_id"],
                }
            )
    return answers


def _print_answers(answers: list[dict]) -> None:
    for answer in answers:
        mark = "OK  " if answer["correct"] else "MISS"
        kind = "ambiguous name" if answer["ambiguous"] else "unique name"
        print(
            f"[{mark}] {answer['mention']!r} ({kind}) | {answer['context'][:70]}... (gold {answer['gold']})"
        )
        for cand in answer["candidates"][:3]:
            print(
                f"       {cand['rank']}. {cand['entity_id']:<10} {cand['score']:8.3f}  {cand['name']}: "
                f"{(cand.get('description') or '')[:60]}"
            )


def run_quickstart(cfg, n_demo: int = 6) -> QuickstartResult:
    """Run every stage in order; each stage writes its artifacts under `storage.root` and can be rerun alone."""
    import ray

    from cluster.artifacts import init_model
    from cluster.evaluate.run import run_eval
    from cluster.index.run import run_index_job
    from cluster.runtime import init_ray, shutdown_ray
    from cluster.serve.ingress import ingress_env
    from cluster.train.run import run_training
    from kb_builder.build import build_kb
    from kb_builder.storage import Storage

    result = QuickstartResult(serve_url=f"http://{cfg.serve.host}:{cfg.serve.port}")
    owns_ray = not ray.is_initialized()  # a caller's Ray (e.g. a test session) is left running
    init_ray(cfg.ray, env=ingress_env(cfg.serve))  # the same Ray serves at the end
    try:
        with _Timer(result, "kb build"):
            report = build_kb(cfg.kb, cfg.storage, image_roots=cfg.encoder.allowed_image_roots)
            result.entities, result.mentions = report.entities, report.mentions
        with _Timer(result, "eval (untrained)"):
            init_uri = init_model(Storage(cfg.storage))  # built on first need
            untrained = run_eval(cfg, checkpoint=init_uri, split="test")
            print(untrained.summary())
            result.untrained = untrained.metrics
        with _Timer(result, "train"):
            trained_run = run_training(cfg)
            print(trained_run.summary())
            result.model_dir = str(trained_run.best_dir)
        with _Timer(result, "index"):
            index_report = run_index_job(cfg, mode="full", checkpoint=result.model_dir)
            print(index_report.summary())
            result.indexed = index_report.indexed_total
        with _Timer(result, "eval (trained)"):
            trained = run_eval(cfg, checkpoint=result.model_dir, split="test")
            print(trained.summary())
            result.trained = trained.metrics
        with _Timer(result, "serve + link"):
            result.answers = _serve_and_link(cfg, result.model_dir, n_demo)
            _print_answers(result.answers)
    finally:
        if owns_ray:
            shutdown_ray()
    print("\n" + result.summary())
    return result


def _serve_and_link(cfg, model_dir: str, n_demo: int) -> list[dict]:
    from ray import serve

    from cluster.serve.app import start_serve
    from cluster.serve.client import wait_ready

    cfg.serve.checkpoint = model_dir
    cfg.serve.access_log = False  # keep the demo's answers readable
    url = start_serve(cfg)
    try:
        if wait_ready(url, attempts=240) != 200:
            raise RuntimeError(f"the linking service at {url} did not become ready in 2 minutes")
        print(f"serving at {url} (OpenAPI at {url}/docs)")
        return link_over_http(url, _pick_demo_mentions(cfg, n_demo))
    finally:
        serve.shutdown()
