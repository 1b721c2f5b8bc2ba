"""The training loop's small pieces: lr schedules, weight-decay groups, duplicate-gold masks, negatives, subsets."""

from __future__ import annotations

import random

import polars as pl
import pytest
import torch

from cluster.inputs import train_subset
from cluster.train.loop import entity_side, same_entity_mask
from cluster.train.negatives import pick_negatives
from cluster.train.optim import lr_factor, param_groups


def test_lr_schedules_warm_up_then_decay():
    assert [lr_factor(s, 10, 0, "constant") for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [lr_factor(s, 10, 4, "constant") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 14, 4, "cosine") == pytest.approx(1.0)
    assert lr_factor(9, 14, 4, "cosine") == pytest.approx(0.5)
    assert lr_factor(14, 14, 4, "cosine") == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(9, 14, 4, "linear") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(0, 10, 0, "step")


def test_no_weight_decay_on_biases_and_layernorm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3  # linear bias, LN weight, LN bias


def test_duplicate_golds_are_masked_but_not_the_label_column():
    mask = same_entity_mask(["e1", "e2", "e1"], ["e1", "e2", "e1", "e9"])
    assert mask.tolist() == [
        [False, False, True, False],
        [False, False, False, False],
        [True, False, False, False],
    ]


def test_hard_negatives_follow_the_gold_columns():
    batch = [
        {"gold_entity_id": "a", "entity_name": "A", "hard_negative_ids": ["x", "y", "z"]},
        {"gold_entity_id": "b", "entity_name": "B", "hard_negative_ids": ["a"]},
    ]
    lookup = {k: {"entity_id": k, "name": k.upper(), "description": "", "image_uris": []} for k in "abxyz"}
    rows, ids = entity_side(batch, lookup, hard_negatives=2)
    assert ids == ["a", "b", "x", "y", "a"]
    assert same_entity_mask(["a", "b"], ids)[0].tolist() == [False, False, False, False, True]
    assert entity_side(batch, lookup, hard_negatives=0)[1] == ["a", "b"]


def test_pick_negatives_excludes_gold_and_stays_in_the_pool():
    rng = random.Random(0)
    picked = pick_negatives(["g", "a", "b", "c", "d"], "g", pool=3, count=2, rng=rng)
    assert len(picked) == 2 and set(picked) <= {"a", "b", "c"}
    assert pick_negatives(["g"], "g", pool=3, count=2, rng=rng) == []


def test_train_fraction_is_a_fixed_seeded_subset():
    frame = pl.DataFrame({"mention_id": [f"m{i}" for i in range(100)]})
    a, b = train_subset(frame, 0.1, seed=43), train_subset(frame, 0.1, seed=43)
    assert a.height == 10 and a.equals(b)
    assert not a.equals(train_subset(frame, 0.1, seed=44))
    assert train_subset(frame, 1.0, seed=43).height == 100


def test_checkpoints_on_s3_go_through_the_configured_endpoint(s3_bucket, tmp_path):
    from cluster.config import load_config
    from cluster.train.run import checkpoint_storage, clear_dir
    from kb_builder.storage import Storage

    endpoint, bucket = s3_bucket
    cfg = load_config(
        overrides=[
            f"storage.root=s3://{bucket}/mel",
            f"storage.s3_endpoint_url={endpoint}",
            "storage.s3_region=us-east-1",
            f"storage.cache_dir={tmp_path}",
        ]
    )
    storage = Storage(cfg.storage)
    path, fs = checkpoint_storage(cfg.storage, storage.join("runs", "r"))
    assert path == f"{bucket}/mel/runs/r"
    uri = storage.join("runs", "r", "checkpoints", "marker.txt")
    storage.write_bytes(uri, b"ok")
    # Ray Train reads and lists through this filesystem. (Its multipart writes are not exercised here: moto
    # 5.2's CompleteMultipartUpload reply is rejected by pyarrow 26's AWS SDK; real S3 and MinIO accept it.)
    with fs.open_input_stream(f"{path}/checkpoints/marker.txt") as stream:
        assert stream.read() == b"ok"
    clear_dir(storage, storage.join("runs", "r", "checkpoints"))  # a fresh run starts without old checkpoints
    assert not storage.exists(uri)
