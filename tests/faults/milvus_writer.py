"""Child process for test_milvus_lite_crash: upsert numbered batches into a Milvus Lite file and print
`ACK <batch>` after each acknowledged one (after upsert + flush, or after upsert alone with `--no-flush`),
forever, until it is killed. Usage: python -m tests.faults.milvus_writer <db path> <collection> [--no-flush]"""

from __future__ import annotations

import sys

import numpy as np

from workers.config import MilvusConfig
from workers.milvus_store import MilvusStore

DIM = 8
ROWS_PER_BATCH = 50


def batch_ids(batch: int) -> list[str]:
    return [f"b{batch:05d}-{i:03d}" for i in range(ROWS_PER_BATCH)]


def main() -> None:
    uri, collection = sys.argv[1], sys.argv[2]
    flush = "--no-flush" not in sys.argv
    store = MilvusStore(MilvusConfig(collection="alias"), uri)
    store.create(collection, DIM)
    rng = np.random.default_rng(0)
    print("READY", flush=True)
    batch = 0
    while True:
        vectors = rng.standard_normal((ROWS_PER_BATCH, DIM)).astype(np.float32)
        store.upsert(
            collection,
            [
                {"entity_id": eid, "vector": v, "name": eid, "has_image": False, "content_hash": ""}
                for eid, v in zip(batch_ids(batch), vectors)
            ],
        )
        if flush:
            store.flush(collection)
        print(f"ACK {batch}", flush=True)
        batch += 1


if __name__ == "__main__":
    main()
