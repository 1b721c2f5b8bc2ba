"""Which model filled a collection: the one owner of model fingerprints and collection names.

`mel index` names each collection `<alias>_v<kb_version[:12]>_<model tag>`; evaluation and hard-negative mining
keep their own `<alias>_eval_v<kb_version[:12]>_<model tag>`. The tag is the first 8 hex characters of the
sha256 of the model's `config.json` + `model.safetensors`, so the vectors in a collection can always be traced to
the weights that made them, and serving can refuse a collection another model filled (`cluster.serve.guard`).
Light on purpose: no torch, no pymilvus, so the HTTP layer can import it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

MODEL_FILES = ("config.json", "model.safetensors")  # what a model's fingerprint covers
TAG_CHARS = 8  # hex chars of the fingerprint in a collection name
KB_VERSION_CHARS = 12  # hex chars of the KB version in a collection name
INDEXED_BY = re.compile(r"_v[0-9A-Za-z_]{12}_([0-9a-f]{8})$")  # <alias>_v<kb_version>_<model tag>


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 (hex) of config.json + model.safetensors: the identity of a model's weights."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        with open(Path(model_dir) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_tag(model_dir: str | Path) -> str:
    """The short fingerprint that collection names carry."""
    return model_fingerprint(model_dir)[:TAG_CHARS]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in text)


def index_collection(alias: str, kb_version: str, tag: str) -> str:
    """The collection `mel index` fills for this KB build and model (Milvus-safe characters only)."""
    return f"{alias}_v{_safe(kb_version[:KB_VERSION_CHARS])}_{tag}"


def eval_collection(alias: str, kb_version: str, tag: str) -> str:
    """The collection evaluation and negative mining fill for this KB build and model."""
    return f"{alias}_eval{index_collection('', kb_version, tag)}"


def indexed_by(collection: str | None) -> str | None:
    """The model tag in a collection name made by `index_collection`, else None (hand-made, tests)."""
    match = INDEXED_BY.search(collection or "")
    return match.group(1) if match else None
