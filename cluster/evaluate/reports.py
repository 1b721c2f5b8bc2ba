"""Run reports next to the checkpoints (`<root>/runs/<run>/reports/`): metrics JSON, a Markdown table in the
paper's layout (H@1/3/5/10/20, MR, MRR; reference section 5), and PNG curves (loss per step, dev metrics per
epoch). Everything goes through `Storage`, so reports land on local disk or S3 alike.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, is_dataclass

PAPER_KS = (1, 3, 5, 10, 20)
REPORTS_DIR = "reports"


def write_json(storage, uri: str, payload) -> None:
    payload = asdict(payload) if is_dataclass(payload) else payload
    storage.write_bytes(uri, json.dumps(payload, indent=2, sort_keys=True, default=float).encode())


def markdown_table(rows: dict[str, dict], ks=PAPER_KS) -> str:
    """One line per protocol/setting: Hits@k and MRR in percent (as the paper prints them), mean rank."""
    head = "| setting | " + " | ".join(f"H@{k}" for k in ks) + " | MR | MRR | mentions |"
    sep = "|---|" + "---:|" * (len(ks) + 3)
    lines = [head, sep]
    for name, m in rows.items():
        hits = " | ".join(f"{100 * m.get(f'hits@{k}', float('nan')):.2f}" for k in ks)
        lines.append(
            f"| {name} | {hits} | {m.get('mean_rank', float('nan')):.2f} | {100 * m.get('mrr', float('nan')):.2f} "
            f"| {int(m.get('count', 0))} |"
        )
    return "\n".join(lines)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def plot_loss(losses: list[list[float]]) -> bytes:
    """Training loss per optimiser step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        ax.plot([s for s, _ in losses], [v for _, v in losses], lw=1)
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    ax.grid(alpha=0.3)
    data = _png(fig)
    plt.close(fig)
    return data


def plot_dev(dev: list[dict], ks=PAPER_KS) -> bytes:
    """Dev Hits@k and MRR per evaluated epoch (exhaustive protocol)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [d["epoch"] for d in dev]
    for key in [f"hits@{k}" for k in ks] + ["mrr"]:
        if dev and key in dev[0]:
            ax.plot(epochs, [d[key] for d in dev], marker="o", lw=1, label=key)
    ax.set(xlabel="epoch", ylabel="fraction", title="dev metrics", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    if dev:
        ax.legend(fontsize=7, ncol=3)
    data = _png(fig)
    plt.close(fig)
    return data


def write_training_reports(storage, run_uri: str, history) -> list[str]:
    """train_history.json, loss.png, dev.png under the run's reports folder; returns their URIs."""
    out = {
        "train_history.json": json.dumps(asdict(history), indent=2).encode(),
        "loss.png": plot_loss(history.losses),
        "dev.png": plot_dev(history.dev),
    }
    uris = []
    for name, data in out.items():
        uri = f"{run_uri.rstrip('/')}/{REPORTS_DIR}/{name}"
        storage.write_bytes(uri, data)
        uris.append(uri)
    return uris


def plot_reliability(calibration: dict) -> bytes:
    """Reliability diagram: accuracy of the best candidate per confidence bin, before and after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for key, label in (("before", "raw softmax"), ("after", "calibrated")):
        bins = calibration.get(f"reliability_{key}") or []
        ece = calibration.get(f"ece_{key}")
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            lw=1,
            label=f"{label} (ECE {ece:.3f})" if ece is not None else label,
        )
    ax.set(xlabel="confidence of the best candidate", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("reliability (dev)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    data = _png(fig)
    plt.close(fig)
    return data


def write_eval_reports(
    storage, run_uri: str, report: dict, tables: dict[str, dict], split: str, calibration: dict | None = None
) -> list[str]:
    """metrics.json (everything), metrics.md (the paper-layout table) and, with a calibration,
    reliability.png under the run's reports folder."""
    base = f"{run_uri.rstrip('/')}/{REPORTS_DIR}"
    md = [f"# Evaluation ({split} split)", "", markdown_table(tables), ""]
    for key in ("checkpoint", "entities", "mentions", "nil_skipped", "retrieve_k", "nil_threshold"):
        if key in report:
            md.append(f"- {key}: {report[key]}")
    for key in ("temperature", "nil_logit", "ece_before", "ece_after", "nil_precision", "nil_recall"):
        if calibration and key in calibration:
            md.append(f"- {key}: {calibration[key]}")
    uris = [f"{base}/metrics.json", f"{base}/metrics.md"]
    write_json(storage, uris[0], report)
    storage.write_bytes(uris[1], ("\n".join(md) + "\n").encode())
    if calibration:
        uris.append(f"{base}/reliability.png")
        storage.write_bytes(uris[-1], plot_reliability(calibration))
    return uris
