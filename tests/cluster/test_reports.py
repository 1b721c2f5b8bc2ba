"""Report files: the paper-layout Markdown table, PNG curves, and where they land."""

from __future__ import annotations

import json

from cluster.evaluate.reports import (
    markdown_table,
    plot_dev,
    plot_loss,
    write_eval_reports,
    write_training_reports,
)
from cluster.train.checkpoint import LoopState

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_markdown_table_has_the_paper_columns_in_percent():
    table = markdown_table(
        {
            "exhaustive": {
                "hits@1": 0.9077,
                "hits@3": 0.9627,
                "hits@5": 0.9741,
                "hits@10": 0.9853,
                "hits@20": 0.9911,
                "mean_rank": 6.93,
                "mrr": 0.9375,
                "count": 5169,
            }
        }
    )
    head, sep, row = table.splitlines()
    assert head == "| setting | H@1 | H@3 | H@5 | H@10 | H@20 | MR | MRR | mentions |"
    assert sep.count("|") == head.count("|")
    assert row == "| exhaustive | 90.77 | 96.27 | 97.41 | 98.53 | 99.11 | 6.93 | 93.75 | 5169 |"


def test_plots_are_pngs_even_without_data():
    assert plot_loss([[1, 2.0], [2, 1.5], [3, 1.0]]).startswith(PNG_MAGIC)
    assert plot_loss([]).startswith(PNG_MAGIC)
    dev = [{"epoch": 1, "hits@1": 0.5, "mrr": 0.6}, {"epoch": 2, "hits@1": 0.7, "mrr": 0.8}]
    assert plot_dev(dev).startswith(PNG_MAGIC)
    assert plot_dev([]).startswith(PNG_MAGIC)


def test_reports_land_in_the_run_folder_locally_and_on_s3(tmp_path, s3_bucket):
    from kb_builder.config import StorageConfig
    from kb_builder.storage import Storage

    endpoint, bucket = s3_bucket
    history = LoopState(
        step=3,
        epoch=1,
        losses=[[1, 2.0], [2, 1.0], [3, 0.5]],
        dev=[{"epoch": 1, "step": 3, "hits@1": 0.5, "mrr": 0.6}],
    )
    tables = {"exhaustive": {"hits@1": 0.5, "mrr": 0.6, "mean_rank": 2.0, "count": 10}}
    for root in (str(tmp_path / "data"), f"s3://{bucket}/mel"):
        storage = Storage(
            StorageConfig(
                root=root, s3_endpoint_url=endpoint, s3_region="us-east-1", cache_dir=str(tmp_path / "cache")
            )
        )
        run = storage.join("runs", "demo")
        written = write_training_reports(storage, run, history)
        written += write_eval_reports(storage, run, {"split": "test", "tables": tables}, tables, "test")
        names = sorted(
            uri.rsplit("/", 1)[-1] for uri in storage.list(storage.join("runs", "demo", "reports"))
        )
        assert names == ["dev.png", "loss.png", "metrics.json", "metrics.md", "train_history.json"]
        assert sorted(u.rsplit("/", 1)[-1] for u in written) == names
        assert json.loads(storage.read_bytes(written[-2]))["tables"]["exhaustive"]["hits@1"] == 0.5
        assert storage.read_bytes(written[-1]).decode().startswith("# Evaluation (test split)")
        assert json.loads(storage.read_bytes(written[0]))["step"] == 3
