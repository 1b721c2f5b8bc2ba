"""Where every stage's artifacts live, by name: the hand-over points between `mel` subcommands.

Every path is a URI under `storage.root` (a local folder or `s3://`); the layout is `docs/contracts.md`.
Stages never build these paths themselves: a rename here moves the whole layout at once. Collection names
belong to `workers.collections`, the DME cache to `cluster.dme.cache`.
"""

from __future__ import annotations

import json
from pathlib import Path

CALIBRATION_FILE = "calibration.json"  # beside a model: written by `mel eval`, read by serving
MENTION_RECIPE_FILE = "mention_text.json"  # beside a trained model: how its mention text was built (DME)
MODEL_CONFIG = "config.json"  # present in every finished MMoE folder (written last)


def kb_manifest(storage, kb_name: str) -> str:
    """The commit point of a KB build (`kb_builder.build`)."""
    return storage.join("kb", kb_name, "manifest.json")


def ensure_kb(cfg, storage) -> None:
    """Build the KB first when a stage runs on a fresh root (the sample KB by default)."""
    if not storage.exists(kb_manifest(storage, cfg.kb.name)):
        from kb_builder.build import build_kb

        build_kb(cfg.kb, cfg.storage, image_roots=cfg.encoder.allowed_image_roots)  # prints a summary


def run_dir(storage, run_name: str) -> str:
    """`runs/<run>/`: checkpoints, `best/`, reports of one training run (or one bench-paper preset)."""
    return storage.join("runs", run_name)


def best_model(storage, run_name: str) -> str:
    """`runs/<run>/best/`: the best model of a training run by dev MRR."""
    return storage.join("runs", run_name, "best")


def init_model(storage) -> str:
    """`models/init/`: the untrained model, built on first need (`workers.model_store`)."""
    return storage.join("models", "init")


def has_model(storage, uri: str) -> bool:
    return storage.exists(f"{uri.rstrip('/')}/{MODEL_CONFIG}")


def trained_or_init(train_cfg, storage, checkpoint: str = "") -> str:
    """The model a stage uses by default: the given checkpoint, else the run's best, else `models/init`."""
    if checkpoint:
        return checkpoint
    best = best_model(storage, train_cfg.run_name)
    return best if has_model(storage, best) else init_model(storage)


def serving_model_dir(cfg) -> Path:
    """The local folder of the model `mel serve` serves (and `mel index` indexes by default):
    `serve.checkpoint`, else the training run's best model, else `models/init`."""
    from kb_builder.storage import Storage
    from workers.model_store import resolve_model_dir

    storage = Storage(cfg.storage)
    checkpoint = cfg.serve.checkpoint or trained_or_init(cfg.train, storage)
    if checkpoint == init_model(storage):
        checkpoint = ""  # resolve_model_dir builds models/init on first need
    return Path(resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe, checkpoint=checkpoint))


def read_calibration(model_dir: str | Path) -> dict:
    """`<model_dir>/calibration.json`, {} when the model was never calibrated."""
    path = Path(model_dir) / CALIBRATION_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_calibration(storage, model_dir: str | Path, checkpoint_uri: str, calibration: dict) -> None:
    """Beside the model: the local folder, and the checkpoint's own location when that is elsewhere (s3)."""
    data = json.dumps(calibration, indent=2).encode()
    (Path(model_dir) / CALIBRATION_FILE).write_bytes(data)
    if checkpoint_uri and checkpoint_uri.rstrip("/") != str(model_dir).rstrip("/"):
        storage.write_bytes(f"{checkpoint_uri.rstrip('/')}/{CALIBRATION_FILE}", data)


def write_mention_recipe(storage, model_uri: str, recipe: dict) -> None:
    """{"dme", "selector", "kb_version"} beside a trained model, so evaluation builds mention text the same way."""
    storage.write_bytes(
        f"{model_uri.rstrip('/')}/{MENTION_RECIPE_FILE}", json.dumps(recipe, indent=2).encode()
    )


def read_mention_recipe(model_dir: str | Path) -> dict | None:
    """The recipe a trained model recorded; None for models from before it (or never trained)."""
    path = Path(model_dir) / MENTION_RECIPE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def nil_threshold(serve_cfg, model_dir: str | Path) -> float | None:
    """The NIL threshold on the best candidate's confidence: serve.nil_threshold, else the calibrated one beside
    the model, else None (never NIL). A calibration.json from before confidences (a raw-score threshold, no
    `nil_threshold_unit`) is ignored: its value would be compared against a probability."""
    if serve_cfg.nil_threshold is not None:
        return float(serve_cfg.nil_threshold)
    calibration = read_calibration(model_dir)
    value = calibration.get("nil_threshold")
    if value is None or calibration.get("nil_threshold_unit") != "confidence":
        return None
    return float(value)
