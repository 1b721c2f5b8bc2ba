"""One storage client for local folders and `s3://bucket/prefix`: every stage reads and writes one way.

boto3 is the only S3 client: endpoint, region, retries and timeouts come from `StorageConfig`, credentials
from the standard AWS environment (env vars, ~/.aws, instance role).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from kb_builder.config import StorageConfig


def is_s3(uri: str) -> bool:
    """True for `s3://bucket/key` URIs."""
    return str(uri).startswith("s3://")


def s3_bucket(uri: str) -> str:
    """`s3://bucket/any/key` -> `s3://bucket`: the operator named the bucket, so its images may be read."""
    return "s3://" + uri[len("s3://") :].split("/", 1)[0]


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = str(uri)[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


class Storage:
    """Read, write, list and stage files under `cfg.root` (local path or s3://)."""

    def __init__(self, cfg: StorageConfig):
        self.cfg = cfg
        # Local roots become absolute: URIs handed to Ray workers must not depend on their working folder.
        self.root = cfg.root.rstrip("/") if is_s3(cfg.root) else str(Path(cfg.root).expanduser().resolve())
        self.cache_dir = Path(cfg.cache_dir).expanduser()
        self._client = None

    # -- plumbing -------------------------------------------------------------------------------------------
    @property
    def s3(self):
        """The boto3 client, made on first use (so local-only runs never import boto3)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": self.cfg.max_retries, "mode": "standard"},
                connect_timeout=self.cfg.connect_timeout_s,
                read_timeout=self.cfg.read_timeout_s,
            )
            self._client = boto3.client(
                "s3", endpoint_url=self.cfg.s3_endpoint_url, region_name=self.cfg.s3_region, config=config
            )
        return self._client

    def __getstate__(self):
        # boto3 clients do not pickle; Ray tasks rebuild the client on first use.
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    def join(self, *parts: str) -> str:
        """A URI under the root: `join("kb", "sample")` -> `<root>/kb/sample`."""
        clean = [str(p).strip("/") for p in parts if str(p).strip("/")]
        if is_s3(self.root):
            return "/".join([self.root, *clean])
        return str(Path(self.root, *clean))

    # -- bytes ----------------------------------------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except self.s3.exceptions.NoSuchKey as err:
                raise FileNotFoundError(uri) from err
            except Exception as err:
                err.add_note(f"while reading {uri}")  # botocore names the operation, not the object
                raise
        return Path(uri).expanduser().read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically for local files (temp + rename), so readers never see half a file."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.s3.put_object(Bucket=bucket, Key=key, Body=data)
            except Exception as err:
                err.add_note(f"while writing {uri}")
                raise
            return
        path = Path(uri).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            return self._head(uri) is not None
        return Path(uri).expanduser().exists()

    def _head(self, uri: str) -> dict | None:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            return self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def fingerprint(self, uri: str) -> str:
        """Cheap change detector: `etag:<etag>` on S3, `size:<bytes>:mtime_ns:<ns>` locally."""
        if is_s3(uri):
            head = self._head(uri)
            if head is None:
                raise FileNotFoundError(uri)
            return f"etag:{head['ETag'].strip(chr(34))}:size:{head['ContentLength']}"
        st = Path(uri).expanduser().stat()
        return f"size:{st.st_size}:mtime_ns:{st.st_mtime_ns}"

    def list(self, prefix: str) -> list[str]:
        """All files under the folder `prefix` (recursive), sorted; a file lists as itself.

        S3 keys have no folders: `s3://b/features/c` lists `features/c/...` (not `features/c2/...`), plus the
        object `features/c` itself if there is one, so local and S3 roots answer alike.
        """
        if is_s3(prefix):
            bucket, key = split_s3(prefix)
            folder = key if not key or key.endswith("/") else key + "/"
            out = []
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
                out += [f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
            if folder != key and self._head(prefix) is not None:
                out.append(prefix)
            return sorted(out)
        path = Path(prefix).expanduser()
        if path.is_file():
            return [str(path)]
        if not path.exists():
            return []
        return sorted(str(p) for p in path.rglob("*") if p.is_file())

    def delete(self, uri: str) -> None:
        """Delete one file (missing is fine)."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.delete_object(Bucket=bucket, Key=key)
            return
        Path(uri).expanduser().unlink(missing_ok=True)

    # -- staging --------------------------------------------------------------------------------------------
    def local_path(self, uri: str) -> Path:
        """A local file for `uri`: local paths unchanged; s3:// staged once per (uri, etag) into cache_dir."""
        if not is_s3(uri):
            return Path(uri).expanduser()
        head = self._head(uri)
        if head is None:
            raise FileNotFoundError(uri)
        bucket, key = split_s3(uri)
        tag = hashlib.sha256(f"{uri}|{head['ETag']}".encode()).hexdigest()[:16]
        target = self.cache_dir / "s3" / bucket / tag / Path(key).name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            self.s3.download_file(bucket, key, str(tmp))
            os.replace(tmp, target)
        return target

    def upload_dir(self, local_dir: str | Path, uri: str) -> int:
        """Copy every file of `local_dir` under `uri` (s3 or local); returns the file count."""
        local_dir = Path(local_dir)
        count = 0
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            dest = f"{uri.rstrip('/')}/{rel}" if is_s3(uri) else str(Path(uri, rel))
            if is_s3(dest):
                bucket, key = split_s3(dest)
                self.s3.upload_file(str(path), bucket, key)
            else:
                Path(dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
            count += 1
        return count

    def download_dir(self, uri: str, local_dir: str | Path) -> int:
        """Copy every file under `uri` into `local_dir`, keeping relative paths; returns the file count."""
        local_dir = Path(local_dir)
        base = uri.rstrip("/")
        count = 0
        for src in self.list(base + "/" if is_s3(base) else base):
            rel = src[len(base) :].lstrip("/") if is_s3(base) else Path(src).relative_to(base).as_posix()
            dest = local_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if is_s3(src):
                bucket, key = split_s3(src)
                self.s3.download_file(bucket, key, str(dest))
            else:
                shutil.copy2(src, dest)
            count += 1
        return count
