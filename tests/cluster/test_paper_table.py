"""Benchmark presets and the paper table: the three overlays carry the official settings, user overrides win over
the preset, the gate runs get their own names, and the table puts our rows beside the published ones."""

from __future__ import annotations

import pytest

from cluster.paper.run import PRESETS, benchmark_config, fraction_tag, gate_configs, preset_config
from cluster.paper.table import MISSING, PAPER_KS, OurRow, paper_table, published_rows

# reference section 1: top-k per dataset, lr 5e-6 (WikiMEL) or 1e-5, seed 43, batch 32
OFFICIAL = {"wikimel": (3, 5e-6), "richpediamel": (4, 1e-5), "wikidiverse": (2, 1e-5)}
HEAD = [
    "model",
    "protocol",
    *(f"H@{k}" for k in PAPER_KS),
    "MR",
    "MRR",
    "mentions",
    "ms/mention",
    "peak RSS MiB",
    "CUDA max alloc MiB",
    "device",
]


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_carries_the_official_settings(preset):
    cfg = preset_config(None, preset)
    top_k, lr = OFFICIAL[preset]
    assert (cfg.mmoe.top_k, cfg.train.lr, cfg.train.seed, cfg.train.batch_size) == (top_k, lr, 43, 32)
    assert (cfg.mmoe.dim, cfg.mmoe.num_experts, cfg.mmoe.text_max_tokens) == (96, 4, 50)
    assert (cfg.train.epochs, cfg.train.eval_every_epochs, cfg.train.early_stop_patience) == (20, 2, 3)
    assert cfg.train.grad_clip_norm is None and cfg.train.mixed_precision is False
    assert (cfg.kb.name, cfg.kb.format, cfg.kb.sample) == (preset, "mimic", False)


def test_user_overrides_win_over_the_preset(tmp_path):
    from cluster.config import load_config

    sets = [f"storage.root={tmp_path}", "train.epochs=1", "mmoe.top_k=1", "encoder.checkpoint=tiny"]
    cli_cfg = load_config(overrides=sets)  # what `mel --set ... bench-paper` hands over: the base config
    from_cfg, from_sets = (
        preset_config(cli_cfg, "richpediamel"),
        preset_config(None, "richpediamel", overrides=sets),
    )
    for cfg in (from_cfg, from_sets):
        assert (cfg.storage.root, cfg.train.epochs, cfg.mmoe.top_k) == (str(tmp_path), 1, 1)
        assert (cfg.train.lr, cfg.kb.name, cfg.mmoe.text_max_tokens) == (
            1e-5,
            "richpediamel",
            50,
        )  # preset kept
    # a --set equal to the base file's value cannot be told apart from the base in `cfg`: only the explicit list
    # (the CLI's args.set) carries it over the preset
    assert from_sets.encoder.checkpoint == "tiny"
    assert from_cfg.encoder.checkpoint == "./models/clip-vit-base-patch32"


def test_gate_runs_and_train_fraction(tmp_path):
    data = tmp_path / "WikiDiverse"
    data.mkdir()
    cfg = benchmark_config(
        None, "wikidiverse", overrides=[f"kb.entity_inputs=['{data}']"], train_fraction=0.1
    )
    assert cfg.train.train_fraction == 0.1
    assert str(data) in cfg.encoder.allowed_image_roots  # MIMIC images live outside storage.root
    runs = gate_configs(cfg)
    assert {g: c.mmoe.gate for g, c in runs.items()} == {"token": "token", "reference": "reference"}
    assert runs["token"].train.run_name == "wikidiverse-train0.1-token"
    assert runs["reference"].train.run_name == "wikidiverse-train0.1-reference"
    assert all(c.train.train_fraction == 0.1 for c in runs.values())
    assert (
        runs["token"].train.eval_every_epochs == runs["reference"].train.eval_every_epochs == 2
    )  # both early-stop
    assert cfg.mmoe.gate == "token"  # copies: the preset config is untouched
    assert fraction_tag(1.0) == "" and fraction_tag(0.2) == "-train0.2"
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config(None, "wikimel2")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table_puts_our_rows_beside_the_published_ones():
    ours = [
        OurRow(
            "MMoE, token gate (ours)",
            "exhaustive",
            {
                "hits@1": 0.5,
                "hits@3": 0.75,
                "hits@5": 1.0,
                "hits@10": 1.0,
                "hits@20": 1.0,
                "mrr": 0.6,
                "mean_rank": 2.0,
                "count": 4,
            },
            12.5,
            812.0,
            None,
        ),
        OurRow(
            "MMoE, reference gate (ours)",
            "exhaustive (official tiles 20×6000)",
            {"hits@1": 0.25, "mrr": 0.4, "mean_rank": 3.5, "count": 4},
            30.0,
            900.0,
            1024.0,
            "cuda",
            ["one-off KB side 1.0 s"],
        ),
    ]
    table = paper_table("wikimel", ours, notes=["2 leak(s)"])
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert _cells(lines[0]) == HEAD
    rows = {(_cells(line)[0], _cells(line)[1]): _cells(line) for line in lines[2:]}
    assert len(rows) == 4 + 2 and all(len(r) == len(HEAD) for r in rows.values())
    mmoe = rows[("MMoE (official logs)", "exhaustive (paper)")]
    assert mmoe[2:9] == ["90.77", "96.27", "97.41", "98.53", "99.11", "6.93", "93.75"]  # reference section 5
    assert mmoe[9:] == [MISSING] * 5
    clip = rows[("CLIP (zero-shot, in MIMIC)", "exhaustive (paper)")]
    assert clip[2:9] == ["83.23", "92.10", "94.51", MISSING, MISSING, MISSING, "88.23"]
    token = rows[("MMoE, token gate (ours)", "exhaustive")]
    assert token[2:] == [
        "50.00",
        "75.00",
        "100.00",
        "100.00",
        "100.00",
        "2.00",
        "60.00",
        "4",
        "12.50",
        "812",
        MISSING,
        "cpu",
    ]
    ref = rows[("MMoE, reference gate (ours)", "exhaustive (official tiles 20×6000)")]
    assert ref[2:9] == ["25.00", MISSING, MISSING, MISSING, MISSING, "3.50", "40.00"] and ref[11:] == [
        "900",
        "1024",
        "cuda",
    ]
    assert table.startswith("## WikiMEL (test split)") and "- 2 leak(s)" in table
    assert "one-off KB side 1.0 s" in table


@pytest.mark.parametrize("preset", PRESETS)
def test_published_rows_per_dataset(preset):
    rows = published_rows(preset)
    assert list(rows) == ["MMoE (official logs)", "M3EL (its logs)", "MIMIC", "CLIP (zero-shot, in MIMIC)"]
    assert all(
        rows["MMoE (official logs)"][k] > rows["CLIP (zero-shot, in MIMIC)"][k] for k in ("hits@1", "mrr")
    )
    assert ("hits@10" in rows["MMoE (official logs)"]) == (preset == "wikimel")


def test_ann_rows_leave_out_what_a_missed_gold_makes_unknown():
    from cluster.paper.protocol import ProtocolRun
    from cluster.paper.run import table_metrics

    metrics = {
        "hits@1": 0.5,
        "hits@3": 0.5,
        "hits@5": 0.75,
        "hits@10": 1.0,
        "hits@20": 1.0,
        "mrr": 0.6,
        "mean_rank": 3.0,
        "count": 4,
    }  # ranks 1, 1, 5, 6 with K=5: the 6 is a miss
    missed = ProtocolRun("system", metrics, 4, 1.0, extra={"retrieve_k": 5, "recall_at_k": 0.75})
    full = ProtocolRun("system", metrics, 4, 1.0, extra={"retrieve_k": 5, "recall_at_k": 1.0})
    assert set(table_metrics(missed)) == {"hits@1", "hits@3", "hits@5", "mrr", "count"}
    assert table_metrics(full) == metrics == table_metrics(ProtocolRun("exhaustive", metrics, 4, 1.0))
