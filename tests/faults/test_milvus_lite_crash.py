"""Milvus Lite crash (issue 9, 1c): the process that owns the Lite file is SIGKILLed mid-ingest; reopened, the
file holds every batch that was acknowledged (upsert + flush returned, what workers.index_job does before it
records a shard as done), each row once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.milvus_writer import ROWS_PER_BATCH, batch_ids
from workers.config import MilvusConfig
from workers.milvus_store import MilvusStore

REPO = Path(__file__).resolve().parents[2]
KILL_AFTER_ACKS = 6


def run_and_kill(db: Path, collection: str, *flags: str) -> list[int]:
    """Start the writer in its own process group, SIGKILL the group after KILL_AFTER_ACKS acks; the acks seen."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.milvus_writer", str(db), collection, *flags],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    acked: list[int] = []
    try:
        for line in proc.stdout:
            if line.startswith("ACK "):
                acked.append(int(line.split()[1]))
                if len(acked) == KILL_AFTER_ACKS:
                    os.killpg(proc.pid, signal.SIGKILL)  # the writer and its Milvus Lite server, mid-ingest
                    break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return acked


def reopen_ids(db: Path, collection: str) -> tuple[int, list[str]]:
    store = MilvusStore(MilvusConfig(collection="alias"), str(db))
    try:
        count = store.count(collection)  # loads the collection (a reopened file starts released)
        rows = store.client.query(
            collection, filter='entity_id != ""', output_fields=["entity_id"], limit=16_384
        )
        return count, [r["entity_id"] for r in rows]
    finally:
        store.close(release_file=True)


@pytest.mark.parametrize("flags", [(), ("--no-flush",)], ids=["upsert+flush", "upsert-only"])
def test_every_acknowledged_batch_survives_a_kill_9(tmp_path, flags):
    db = tmp_path / "milvus.db"
    acked = run_and_kill(db, "ingest", *flags)
    assert acked == list(range(KILL_AFTER_ACKS))
    count, ids = reopen_ids(db, "ingest")
    assert len(ids) == len(set(ids)) == count  # each row once
    missing = sorted(set(i for b in acked for i in batch_ids(b)) - set(ids))
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {missing[:3]}"
    assert count >= KILL_AFTER_ACKS * ROWS_PER_BATCH  # (the writer may have gone on past the acks we read)
