"""`mel bench-paper --preset wikimel|richpediamel|wikidiverse`: reproduce the paper's table on a benchmark.

Steps: the preset overlay (configs/<preset>.yaml, the official settings) under the user's --set overrides ->
build the KB from the MIMIC folder -> leakage check (`mel kb check`; printed, fatal only with `strict`) ->
train twice, `mmoe.gate: token` and `reference` (runs `<run>-token`, `<run>-reference`) -> evaluate the token
gate under both protocols (exhaustive; Milvus top-K + exact rerank) and the reference gate under the
exhaustive protocol only, on the official tiles (cluster.paper.protocol) -> write
`<root>/runs/<preset>/paper_table.md` (+ paper_results.json): our rows beside the published ones
(cluster.paper.table), with cost per mention and peak memory per protocol. A low-resource run
(`train_fraction` < 1) names its runs and files `...-train0.1` / `paper_table_train0.1.md`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path

from cluster.artifacts import run_dir
from cluster.evaluate.reference import OFFICIAL_ENTITY_TILE, OFFICIAL_MENTION_TILE
from cluster.paper.protocol import ProtocolRun
from cluster.paper.table import OurRow, paper_table

PRESETS = ("wikimel", "richpediamel", "wikidiverse")
PRESET_DIR = Path(__file__).resolve().parents[2] / "configs"
GATES = ("token", "reference")
# Changing these changes the weights' shapes: models/init cannot be reused across them.
STRUCTURAL_MMOE_KEYS = ("dim", "num_experts", "expert_hidden_mult", "text_max_tokens")


def preset_path(preset: str) -> Path:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    return PRESET_DIR / f"{preset}.yaml"


def _carry_changes(target, changed, base) -> None:
    """Copy onto `target` every leaf where `changed` differs from `base` (the user's --set and overlays)."""
    for f in dataclasses.fields(changed):
        value, default = getattr(changed, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(value):
            _carry_changes(getattr(target, f.name), value, default)
        elif value != default:
            setattr(target, f.name, copy.deepcopy(value))


def preset_config(
    cfg,
    preset: str,
    overrides: list[str] | None = None,
    config_path: str | None = None,
    overlays: list[str] | None = None,
):
    """The preset overlaid on the config file, the user's overrides on top.

    With `overrides` (the CLI's --set list) the config is reloaded as `load_config(config_path, overrides,
    overlays=[preset, *overlays])` (the user's --overlay files over the preset). Without, every key where `cfg`
    differs from the plain config file is carried over (a --set equal to the file's value is then invisible).
    """
    from cluster.config import load_config

    overlay = preset_path(preset)
    if overrides is not None:
        return load_config(config_path, overrides=overrides, overlays=[overlay, *(overlays or [])])
    out = load_config(config_path, overlays=[overlay])
    if cfg is not None:
        _carry_changes(out, cfg, load_config(config_path))
    return out


def benchmark_config(
    cfg,
    preset: str,
    overrides: list[str] | None = None,
    config_path: str | None = None,
    train_fraction: float | None = None,
    overlays: list[str] | None = None,
):
    """`preset_config` plus the run's own settings: the train fraction, and the MIMIC folders as image roots
    (training and evaluation read images only under storage.root and encoder.allowed_image_roots)."""
    from kb_builder.storage import is_s3

    pcfg = preset_config(cfg, preset, overrides, config_path, overlays)
    if train_fraction is not None:
        pcfg.train.train_fraction = train_fraction
    roots = pcfg.encoder.allowed_image_roots
    for spec in dict.fromkeys(pcfg.kb.entity_inputs + pcfg.kb.mention_inputs):
        path = Path(spec).expanduser()
        root = str(path.parent if path.is_file() else path)
        if not is_s3(spec) and root not in roots:
            roots.append(root)
    return pcfg


def fraction_tag(train_fraction: float) -> str:
    """'' for full training, "-train0.1" for a low-resource run (names its runs and its table)."""
    return "" if train_fraction >= 1.0 else f"-train{train_fraction:g}"


def gate_configs(pcfg) -> dict[str, object]:
    """gate -> a copy of the preset config training that gate under its own run name.

    Both gates early-stop on dev MRR; under the reference gate the dev evaluation scores the paper's tiles
    (its features depend on the batch, so they cannot be cached).
    """
    out = {}
    for gate in GATES:
        gcfg = copy.deepcopy(pcfg)
        gcfg.mmoe.gate = gate
        gcfg.train.run_name = f"{pcfg.train.run_name}{fraction_tag(pcfg.train.train_fraction)}-{gate}"
        out[gate] = gcfg
    return out


@contextmanager
def init_model_as(cfg):
    """`models/init` (built on first need) with `cfg.mmoe` in its config.json while the block runs.

    run_training starts from `<root>/models/init`, whose config was fixed by whoever built it; the gate and
    top-k change no weight shape, so both gates start from the same weights with their own settings. The
    original config.json is put back afterwards (serving and indexing need the token gate).
    """
    from workers.model_store import resolve_model_dir

    model_dir = resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe)
    path = Path(model_dir) / "config.json"
    original = path.read_text()
    data = json.loads(original)
    wanted = dataclasses.asdict(cfg.mmoe)
    clash = {
        k: (data["mmoe"].get(k), wanted[k]) for k in STRUCTURAL_MMOE_KEYS if data["mmoe"].get(k) != wanted[k]
    }
    if clash:
        raise ValueError(
            f"{model_dir} was built with other shapes (built, wanted: {clash}); "
            "use another storage.root or remove models/init"
        )
    path.write_text(json.dumps({**data, "mmoe": wanted}, indent=2, default=str))
    try:
        yield model_dir
    finally:
        path.write_text(original)


def table_metrics(run: ProtocolRun) -> dict[str, float]:
    """The metrics a protocol can vouch for. ANN top-K gives a missed gold rank K+1, so when recall@K < 1,
    H@k for k > K and the mean rank are unknown (left out: "–"); MRR then counts a miss as 1/(K+1)."""
    k, recall = run.extra.get("retrieve_k"), run.extra.get("recall_at_k", 1.0)
    if run.name != "system" or recall >= 1.0:
        return dict(run.metrics)
    return {
        key: v
        for key, v in run.metrics.items()
        if key != "mean_rank" and not (key.startswith("hits@") and int(key.split("@")[1]) > k)
    }


def _row(gate: str, run: ProtocolRun) -> OurRow:
    names = {
        "exhaustive": "exhaustive",
        "reference exhaustive": "exhaustive (official tiles "
        f"{run.extra.get('mention_tile')}×{run.extra.get('entity_tile')})",
        "system": f"ANN top-{run.extra.get('retrieve_k')} + rerank",
    }
    notes = [f"one-off KB side {run.setup_s:.1f} s"]
    if "recall_at_k" in run.extra:
        k, recall = run.extra["retrieve_k"], run.extra["recall_at_k"]
        notes.append(f"retrieval recall@{k} {100 * recall:.2f}")
        if recall < 1.0:
            notes.append(f"a gold outside the top-{k} counts as rank {k + 1} in MRR; H@k>{k} and MR unknown")
    return OurRow(
        f"MMoE, {gate} gate (ours)",
        names[run.name],
        table_metrics(run),
        run.ms_per_mention,
        run.peak_rss_mib,
        run.cuda_max_allocated_mib,
        run.device,
        notes,
    )


@dataclasses.dataclass
class GateRun:
    """One gate's training run and the protocols it was evaluated under."""

    gate: str
    run_name: str
    best_dir: str
    train_mentions: int
    epochs: int
    dev: list[dict]
    protocols: list[ProtocolRun]

    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "protocols"}
        out["protocols"] = {
            p.name: {
                **{k: v for k, v in dataclasses.asdict(p).items() if k != "extra"},
                "ms_per_mention": p.ms_per_mention,
                "extra": {k: v for k, v in p.extra.items() if k != "ranks"},
            }
            for p in self.protocols
        }
        return out


def leakage_check(pcfg, strict: bool = False):
    """`mel kb check` on the built KB: printed; with `strict`, a leak stops the benchmark."""
    from kb_builder.check import check_kb

    report = check_kb(pcfg.kb, pcfg.storage)
    print(report.summary())
    if strict and report.leaks:
        raise ValueError(f"--strict: {report.leaks} leak(s) in KB {pcfg.kb.name!r}; see the check above")
    return report


def bench_gate(
    gate: str, gcfg, split: str, device: str | None, mention_tile: int, entity_tile: int
) -> GateRun:
    """Train one gate from models/init, then evaluate it under the protocols that gate allows."""
    from cluster.paper.protocol import measure_reference, measure_token
    from cluster.train.run import run_training
    from workers.model_store import resolve_model_dir

    with init_model_as(gcfg):
        trained = run_training(gcfg)
    print(trained.summary())
    model_dir = resolve_model_dir(gcfg.storage, gcfg.kb, gcfg.encoder, gcfg.mmoe, checkpoint=trained.best_dir)
    if gate == "token":
        protocols = measure_token(gcfg, model_dir, split)
    else:
        protocols = [measure_reference(gcfg, model_dir, split, device, mention_tile, entity_tile)]
    return GateRun(
        gate,
        gcfg.train.run_name,
        trained.best_dir,
        trained.train_mentions,
        trained.history.epoch,
        trained.history.dev,
        protocols,
    )


def _notes(pcfg, build, check, runs: list[GateRun]) -> list[str]:
    sentence_leaks = sum(check.sentence_leaks.values())
    return [
        f"KB {pcfg.kb.name!r}: {build.entities:,} entities, {build.mentions:,} mentions; {check.leaks} leak(s) "
        f"found by `mel kb check` ({check.image_leaks} image, {sentence_leaks} sentence)"
        + (" — they inflate scores" if check.leaks else ""),
        f"train fraction {pcfg.train.train_fraction:g}: "
        + ", ".join(f"{r.gate} gate {r.train_mentions} train mentions, {r.epochs} epoch(s)" for r in runs),
        "reference gate: dev early stopping on the paper's tiles; its features depend on the batch, so it is "
        "evaluated exhaustively only",
    ]


def run_bench_paper(
    cfg,
    preset: str = "wikimel",
    overrides: list[str] | None = None,
    train_fraction: float | None = None,
    strict: bool = False,
    split: str = "test",
    config_path: str | None = None,
    overlays: list[str] | None = None,
    device: str | None = None,
    mention_tile: int = OFFICIAL_MENTION_TILE,
    entity_tile: int = OFFICIAL_ENTITY_TILE,
) -> str:
    """Run the benchmark (module docstring); returns the Markdown table it wrote."""
    from cluster.runtime import init_ray
    from kb_builder.build import build_kb
    from kb_builder.storage import Storage

    pcfg = benchmark_config(cfg, preset, overrides, config_path, train_fraction, overlays)
    init_ray(pcfg.ray)
    build = build_kb(pcfg.kb, pcfg.storage, image_roots=pcfg.encoder.allowed_image_roots)
    check = leakage_check(pcfg, strict)
    runs = [
        bench_gate(gate, gcfg, split, device, mention_tile, entity_tile)
        for gate, gcfg in gate_configs(pcfg).items()
    ]
    rows = [_row(run.gate, p) for run in runs for p in run.protocols]
    table = paper_table(preset, rows, split, _notes(pcfg, build, check, runs))
    results = {
        "preset": preset,
        "split": split,
        "train_fraction": pcfg.train.train_fraction,
        "kb": dataclasses.asdict(build),
        "leaks": check.leaks,
        "gates": {r.gate: r.to_dict() for r in runs},
    }
    storage, tag = Storage(pcfg.storage), fraction_tag(pcfg.train.train_fraction).replace("-", "_")
    out_dir = run_dir(storage, preset)
    storage.write_bytes(f"{out_dir}/paper_table{tag}.md", table.encode())
    storage.write_bytes(
        f"{out_dir}/paper_results{tag}.json", json.dumps(results, indent=2, default=str).encode()
    )
    return table
