"""Where `kb.sample: true` finds its sources: `<root>/sample_src/`, generated once per (size, seed).

Local roots get the files written in place; s3:// roots get them generated in the cache and uploaded.
A `sample_meta.json` records the parameters, so a changed `kb.sample_entities` regenerates the sources.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from kb_builder.config import KBConfig
from kb_builder.sample_kb import write_sample_kb
from kb_builder.storage import Storage, is_s3

META_FILE = "sample_meta.json"
SAMPLE_SEED = 0
GENERATOR_VERSION = 2  # bump when sample_kb's output changes, so stored sources are regenerated


def ensure_sample_sources(kb: KBConfig, storage: Storage) -> str:
    """The URI of the sample source folder, generating its files when missing or of other parameters."""
    src = storage.join("sample_src")
    meta = {
        "n_entities": kb.sample_entities,
        "n_mentions": kb.sample_mentions,
        "seed": SAMPLE_SEED,
        "generator": GENERATOR_VERSION,
    }
    meta_uri = f"{src}/{META_FILE}"
    if storage.exists(meta_uri) and json.loads(storage.read_bytes(meta_uri)) == meta:
        return src
    if is_s3(src):
        storage.cache_dir.mkdir(parents=True, exist_ok=True)
        local = Path(tempfile.mkdtemp(prefix="sample_src-", dir=storage.cache_dir))
        try:
            write_sample_kb(local, kb.sample_entities, kb.sample_mentions, SAMPLE_SEED)
            (local / META_FILE).write_text(json.dumps(meta))
            storage.upload_dir(local, src)
        finally:
            shutil.rmtree(local, ignore_errors=True)
    else:
        shutil.rmtree(Path(src) / "images", ignore_errors=True)
        write_sample_kb(src, kb.sample_entities, kb.sample_mentions, SAMPLE_SEED)
        Path(src, META_FILE).write_text(json.dumps(meta))
    return src
