"""Which local image paths a KB may name: the one rule that `mel kb build` and indexing both apply.

A local image must lie, after `..` is refused and symlinks are resolved, under an allowed root: the folders of
the KB's local inputs, the storage root (the sample KB's images live in `<root>/sample_src/`) and any
configured extra roots (`encoder.allowed_image_roots`). So a KB row cannot read `/etc/passwd`, directly or
through a symlink placed in the KB folder. The build rejects such rows with this reason, so rejects.jsonl tells
the whole story; the image loader refuses them again at index and serve time.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import polars as pl

from kb_builder.config import KBConfig, StorageConfig
from kb_builder.storage import is_s3, s3_bucket

REMOTE_PREFIXES = ("s3://", "http://", "https://")
OUTSIDE_ROOTS = "image path outside the KB folder and the allowed image roots (symlinks resolved)"


def kb_image_roots(kb_cfg: KBConfig) -> list[str]:
    """Folders of the local KB inputs (relative image paths resolve against them) and the buckets of s3 ones
    (the operator named them, so their images may be read; `allowed_roots` keeps only the local ones)."""
    roots = []
    for uri in [*kb_cfg.entity_inputs, *kb_cfg.mention_inputs]:
        if is_s3(uri):
            roots.append(s3_bucket(uri))
            continue
        path = Path(uri).expanduser()
        while any(ch in str(path) for ch in "*?["):
            path = path.parent
        roots.append(str(path if path.is_dir() else path.parent))
    return roots


def allowed_roots(storage_cfg: StorageConfig, roots: list[str]) -> list[Path]:
    """`roots` plus the local storage root, resolved (symlinks followed), sorted, without s3:// ones."""
    roots = [*roots] + ([storage_cfg.root] if not is_s3(storage_cfg.root) else [])
    return sorted({Path(r).expanduser().resolve() for r in roots if r and not is_s3(r)})


def check_local_image(uri: str, roots: list[Path], parents: dict[str, str] | None = None) -> Path:
    """The resolved path if it lies under one of `roots` (symlinks and `..` resolved first), else raise
    PermissionError. `roots` come from `allowed_roots`. `parents` caches resolved folders across calls (a KB's
    images share a few folders: one `lstat` per image instead of one per path component)."""
    return Path(_resolved_under(uri, [str(r) for r in roots], {} if parents is None else parents))


def _resolved_under(uri: str, roots: list[str], parents: dict[str, str]) -> str:
    raw = unquote(urlparse(uri).path) if uri.startswith("file://") else uri
    if ".." in raw.split(os.sep):
        raise PermissionError("'..' in image path is not allowed")
    folder, name = os.path.split(os.path.abspath(os.path.expanduser(raw)))
    if folder not in parents:
        parents[folder] = os.path.realpath(folder)
    path = os.path.join(parents[folder], name) if name else parents[folder]
    if os.path.islink(path):  # the file itself may point out of the folder
        path = os.path.realpath(path)
    if not any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        raise PermissionError(OUTSIDE_ROOTS)
    return path


def _verdicts(uris: list[str], roots: list[Path]) -> dict[str, str]:
    """{uri: reason} for the local uris that break the rule; each distinct path is resolved once."""
    bad, parents, root_texts = {}, {}, [str(r) for r in roots]
    for uri in uris:
        if uri.startswith(REMOTE_PREFIXES):
            continue
        try:
            _resolved_under(uri, root_texts, parents)
        except (PermissionError, OSError, ValueError) as err:  # a path too long to resolve is refused too
            bad[uri] = f"{err}: {uri}"
    return bad


def refuse_outside_roots(frame: pl.DataFrame, roots: list[Path], reason_col: str) -> pl.DataFrame:
    """Canonical rows whose local image (`image_uris` / `image_uri`) breaks the rule get a reason in
    `reason_col` (unless they already have one), so validation rejects them with file and line."""
    col = "image_uris" if "image_uris" in frame.columns else "image_uri"
    if col not in frame.columns or frame.height == 0:
        return frame
    is_list = isinstance(frame.schema[col], pl.List)
    uris = (frame[col].explode() if is_list else frame[col]).drop_nulls().unique().to_list()
    bad = _verdicts(uris, roots)
    if not bad:
        return frame
    old, new = list(bad), list(bad.values())
    if is_list:
        reason = (
            pl.col(col)
            .list.eval(pl.element().replace_strict(old, new, default=None, return_dtype=pl.String))
            .list.drop_nulls()
            .list.first()
        )
    else:
        reason = pl.col(col).replace_strict(old, new, default=None, return_dtype=pl.String)
    return frame.with_columns(pl.coalesce(pl.col(reason_col), reason).alias(reason_col))
