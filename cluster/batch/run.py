"""`run_link_batch`: mentions -> Ray Data actor pool -> Parquet parts, resumable part by part.

Steps: read and validate (reader.read_parts) -> skip parts already in the output -> one Ray Data dataset of
the pending rows -> `map_batches(LinkActor)` on an actor pool sized by the `batch:` config (one operator: each
call reads the images, encodes, searches and reranks its whole batch) -> stream results back in order, write
each part atomically once all its rows are back -> summary (rows, linked, NIL, rejected, rows/s; Hits@k and
MRR when the input has gold ids) and where the time went (`StageTimes`).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import polars as pl

PART_ID = "_part"
ACTOR_MS = ("image_ms", "encode_ms", "retrieve_ms", "rerank_ms", "batch_ms")  # per-batch timing columns


@dataclass
class StageTimes:
    """Where a run's wall time went. Driver-side stages are wall seconds; the actor stages are summed over
    batches (seconds of actor time: with several actors they overlap and can exceed the wall time)."""

    setup_s: float = 0.0  # imports, Ray and the Milvus Lite server (when not already up)
    read_s: float = 0.0  # read + validate the input, find the parts already done
    plan_s: float = 0.0  # Ray Data imports, the dataset of the pending rows (one block per batch), the plan
    startup_s: float = 0.0  # execution start: Ray Data's helper actors, the actor's process and model load
    link_s: float = 0.0  # first batch start -> last batch back (the steady part of the run)
    image_s: float = 0.0  # actor: image reads and decodes
    encode_s: float = 0.0  # actor: MentionEncoder
    search_s: float = 0.0  # actor: Retriever (one ANN search + vector fetch per batch)
    rerank_s: float = 0.0  # actor: Reranker
    assemble_s: float = 0.0  # actor: the rest of a call (answers -> Arrow columns)
    write_s: float = 0.0  # driver: Parquet parts and rejects files
    summary_s: float = 0.0  # driver: counts and gold metrics over every part
    batches: int = 0

    def add_rows(self, frame: pl.DataFrame) -> None:
        """Rows back from the actors: each carries its batch's timings (ms) and size, so a row's share of a
        batch stage is ms / batch_rows (Ray Data may merge several calls' outputs into one block)."""
        share = {k: (frame[k].fill_null(0.0) / frame["batch_rows"]).sum() / 1000 for k in ACTOR_MS}
        self.image_s += share["image_ms"]
        self.encode_s += share["encode_ms"]
        self.search_s += share["retrieve_ms"]
        self.rerank_s += share["rerank_ms"]
        self.assemble_s += share["batch_ms"] - sum(v for k, v in share.items() if k != "batch_ms")
        self.batches += round((1.0 / frame["batch_rows"]).sum())

    def table(self) -> str:
        rows = [
            (f.name.removesuffix("_s"), getattr(self, f.name)) for f in fields(self) if f.name != "batches"
        ]
        return "  ".join(f"{name} {seconds:.1f}s" for name, seconds in rows) + f"  ({self.batches} batches)"


@dataclass
class BatchReport:
    rows: int = 0  # answered rows in the output (all parts)
    linked: int = 0
    nil: int = 0
    rejected: int = 0  # validation + unreadable images
    parts: int = 0
    skipped_parts: int = 0  # already written by an earlier run
    linked_this_run: int = 0
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0  # rows linked by this run / its wall time (end to end)
    steady_rows_per_s: float = 0.0  # rows linked by this run / (wall time - setup, read, plan and start-up)
    stages: StageTimes = field(default_factory=StageTimes)
    gold_rows: int = 0
    hits: dict[str, float] = field(default_factory=dict)  # "hits@k" -> fraction, over rows with a gold id
    mrr: float | None = None
    output: str = ""

    def summary(self) -> str:
        text = (
            f"link-batch: {self.rows:,} rows ({self.linked:,} linked, {self.nil:,} NIL), {self.rejected:,} "
            f"rejected; {self.parts} parts ({self.skipped_parts} already done); {self.linked_this_run:,} rows "
            f"in {self.elapsed_s:.1f} s = {self.rows_per_s:,.1f} rows/s ({self.steady_rows_per_s:,.1f} rows/s "
            f"after start-up); output {self.output}\n  stages: {self.stages.table()}"
        )
        if self.gold_rows:
            hits = " ".join(f"{k}={v:.4f}" for k, v in self.hits.items())
            text += f"\n  gold: {self.gold_rows:,} rows, {hits} MRR={self.mrr:.4f}"
        return text


def _join(output: str, *parts: str) -> str:
    """A path under the output folder or s3:// prefix."""
    return "/".join([output.rstrip("/"), *parts]) if output.startswith("s3://") else str(Path(output, *parts))


def _write_parquet(storage, uri: str, frame: pl.DataFrame) -> None:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    storage.write_bytes(uri, buf.getvalue())  # atomic locally (temp + rename); one PUT on S3


def _write_rejects(storage, uri: str, rejects: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rejects)
    storage.write_bytes(uri, text.encode())


def _pending(parts, storage, output: str, report: BatchReport) -> pl.DataFrame:
    """Rows of the parts not yet in the output, tagged with their part number."""
    frames = []
    for part in parts:
        report.parts += 1
        if storage.exists(_join(output, "parts", f"part-{part.index:05d}.parquet")):
            report.skipped_parts += 1
            continue
        frames.append(part.rows.with_columns(pl.lit(part.index, dtype=pl.Int64).alias(PART_ID)))
    return pl.concat(frames) if frames else pl.DataFrame()


def _link_pending(
    cfg, pending: pl.DataFrame, storage, output: str, progress: bool, stages: StageTimes
) -> None:
    """Stream the pending rows through the actor pool; write each part when its last row is back."""
    start = time.monotonic()  # start-up: Ray Data and torch imports, planning, actors loading the model
    import ray

    from cluster.artifacts import nil_threshold, serving_model_dir
    from cluster.batch.actor import LinkActor
    from kb_builder.progress import Progress
    from workers.collections import model_tag

    b = cfg.batch
    model_dir = serving_model_dir(cfg)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # parts complete one after another: bounded driver memory
    ctx.enable_progress_bars = False
    expected = dict(pending.group_by(PART_ID).len().iter_rows())
    # One block per actor call: each call gets a whole batch_size batch without Ray Data re-slicing blocks.
    # from_blocks computes block metadata here; from_arrow runs a Ray task per block for it (worker processes
    # to start, seconds before the first batch).
    table = pending.to_arrow()
    ds = ray.data.from_blocks([table.slice(i, b.batch_size) for i in range(0, table.num_rows, b.batch_size)])
    ds = ds.map_batches(
        LinkActor,
        fn_constructor_args=(
            cfg,
            str(model_dir),
            nil_threshold(cfg.serve, model_dir),
            model_tag(model_dir),
        ),
        batch_size=b.batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(
            size=b.actors,
            max_concurrent_calls_per_actor=b.calls_per_actor,
            enable_true_multi_threading=b.calls_per_actor > 1,  # LinkActor locks its own compute
        ),
        num_cpus=b.num_cpus_per_actor,
        num_gpus=b.num_gpus_per_actor,
    )
    stages.plan_s = time.monotonic() - start
    meter, held, got = Progress("link-batch", total=pending.height, enabled=progress), {}, {}
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):  # blocks, in input order
        frame = pl.from_arrow(batch)
        if not stages.batches:  # the first call's own time is link time, the wait before it is start-up
            stages.startup_s = time.monotonic() - start - stages.plan_s - frame["batch_ms"][0] / 1000
        stages.add_rows(frame)
        meter.update(frame.height, None)
        for (index,), rows in frame.partition_by(PART_ID, as_dict=True, maintain_order=True).items():
            held.setdefault(index, []).append(rows)
            got[index] = got.get(index, 0) + rows.height
            if got[index] == expected[index]:
                written = time.monotonic()
                _finish_part(storage, output, index, pl.concat(held.pop(index)).drop(PART_ID))
                stages.write_s += time.monotonic() - written
    meter.done()
    stages.link_s = time.monotonic() - start - stages.plan_s - stages.startup_s


def _finish_part(storage, output: str, index: int, rows: pl.DataFrame) -> None:
    """Image rejects first, then the part: the part's Parquet file is the commit mark a re-run looks for."""
    bad = rows.filter(pl.col("reject_reason").is_not_null())
    rejects = [
        {"source": loc.rsplit(":", 1)[0], "location": loc, "reason": f"unreadable image: {why}", "row": mid}
        for mid, loc, why in bad.select("mention_id", "_location", "reject_reason").iter_rows()
    ]
    _write_rejects(storage, _join(output, "rejects", f"part-{index:05d}.jsonl"), rejects)
    good = rows.filter(pl.col("reject_reason").is_null()).drop("reject_reason")
    _write_parquet(storage, _join(output, "parts", f"part-{index:05d}.parquet"), good)


def _summarise(storage, output: str, report: BatchReport, ks: list[int]) -> None:
    """Counts over every part (this run's and earlier ones'), rejects over every rejects file, gold metrics."""
    parts = [u for u in storage.list(_join(output, "parts")) if u.endswith(".parquet")]
    cols = ["nil", "entity_ids", "gold_entity_id"]
    frames = [pl.read_parquet(io.BytesIO(storage.read_bytes(u)), columns=cols) for u in parts]
    frame = (
        pl.concat(frames) if frames else pl.DataFrame(schema={"nil": pl.Boolean, "gold_entity_id": pl.String})
    )
    report.rows, report.nil = frame.height, int(frame["nil"].sum())
    report.linked = report.rows - report.nil
    rejects = [u for u in storage.list(_join(output, "rejects")) if u.endswith(".jsonl")]
    report.rejected = sum(storage.read_bytes(u).count(b"\n") for u in rejects)
    gold = frame.filter(pl.col("gold_entity_id").is_not_null())
    report.gold_rows = gold.height
    if gold.height:
        ranks = [
            ids.index(g) + 1 if g in ids else None
            for ids, g in zip(gold["entity_ids"].to_list(), gold["gold_entity_id"].to_list())
        ]
        top = max((len(ids) for ids in gold["entity_ids"].to_list()), default=0)
        report.hits = {
            f"hits@{k}": sum(1 for r in ranks if r and r <= k) / gold.height for k in ks if k <= top
        }
        report.mrr = sum(1.0 / r for r in ranks if r) / gold.height  # within the returned top_k


def run_link_batch(cfg, inputs: list[str], output: str, progress: bool = True) -> BatchReport:
    """Link every mention of `inputs` into `output` (folder or s3:// prefix); re-runs skip finished parts."""
    from cluster.batch.reader import read_parts
    from kb_builder.storage import Storage
    from kb_builder.validate import RejectsWriter

    start = time.monotonic()
    storage, report = Storage(cfg.storage), BatchReport(output=output)
    stages = report.stages
    local = Path(cfg.storage.cache_dir).expanduser() / "link-batch-rejects.jsonl"
    rejects = RejectsWriter(local)  # validation rejects: recomputed each run (the input decides them)
    pending = _pending(
        read_parts(inputs, cfg.kb, storage, cfg.batch.rows_per_part, rejects), storage, output, report
    )
    rejects.close()
    storage.write_bytes(_join(output, "rejects", "input.jsonl"), local.read_bytes())
    stages.read_s = time.monotonic() - start
    if pending.height:
        from cluster.runtime import init_ray
        from cluster.serve.app import _local_lite_server as local_lite_server

        init_ray(cfg.ray)
        cfg = local_lite_server(cfg)
        stages.setup_s = time.monotonic() - start - stages.read_s
        _link_pending(cfg, pending, storage, output, progress, stages)
    report.linked_this_run, report.elapsed_s = pending.height, time.monotonic() - start
    summary_start = time.monotonic()
    _summarise(storage, output, report, cfg.eval.ks)
    stages.summary_s = time.monotonic() - summary_start
    report.elapsed_s = time.monotonic() - start
    report.rows_per_s = report.linked_this_run / max(report.elapsed_s, 1e-9)
    steady_s = report.elapsed_s - stages.setup_s - stages.read_s - stages.plan_s - stages.startup_s
    report.steady_rows_per_s = report.linked_this_run / max(steady_s, 1e-9)
    storage.write_bytes(_join(output, "summary.json"), json.dumps(asdict(report), indent=1).encode())
    return report
