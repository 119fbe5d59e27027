"""Global batch -> per-device batch and accumulation; rank fingerprints and their comparison."""

import pytest
from train_fixtures import tiny_data_dir

from whisfusion.config import DataConfig
from whisfusion.distributed import (
    BatchPlanError,
    expected_world_size,
    fingerprint,
    mismatch_message,
    plan_batches,
    train_shard_listing,
)


@pytest.mark.parametrize(
    ("global_batch", "world", "max_per_device", "per_device", "accumulate"),
    [
        (0, 8, 16, 16, 1),  # 0: no accumulation, the configured batch on every rank
        (1024, 8, 64, 64, 2),
        (1024, 8, 128, 128, 1),
        (96, 4, 16, 12, 2),  # 24 per rank: 16 does not divide it, 12 does
        (36, 2, 8, 6, 3),
        (26, 2, 8, 1, 13),  # 13 per rank is prime: possible, but one utterance at a time
        (8, 8, 4, 1, 1),
    ],
)
def test_plan(global_batch, world, max_per_device, per_device, accumulate):
    plan = plan_batches(global_batch, world, max_per_device)
    assert (plan.per_device, plan.accumulate, plan.world_size) == (per_device, accumulate, world)


def test_plan_is_exact_and_uses_the_largest_batch_that_fits():
    for world in (1, 2, 3, 8):
        for max_per_device in (1, 4, 7, 16):
            for global_batch in range(world, 200, world):
                plan = plan_batches(global_batch, world, max_per_device)
                assert plan.global_batch == global_batch
                assert plan.per_device <= max_per_device
                per_rank = global_batch // world
                larger = range(plan.per_device + 1, max_per_device + 1)
                assert not [b for b in larger if per_rank % b == 0]


@pytest.mark.parametrize(
    ("global_batch", "world", "hint"), [(100, 8, "96 or 104"), (4, 8, "e.g. 8$")]
)
def test_impossible_plan_names_the_nearest_sizes(global_batch, world, hint):
    with pytest.raises(BatchPlanError, match=f"split evenly over {world} ranks.*{hint}"):
        plan_batches(global_batch, world, 16)


def test_expected_world_size():
    assert expected_world_size("gpu", "4", 3) == 12
    assert expected_world_size("cpu", "auto", 2) == 2


FP = fingerprint("trainer: {}\n", b"tok", ["b.tar:3", "a.tar:2"])


def test_fingerprint_ignores_shard_order_and_sees_every_part():
    assert fingerprint("trainer: {}\n", b"tok", ["a.tar:2", "b.tar:3"]) == FP
    assert fingerprint("trainer: {}\n", b"tok", ["a.tar:2"])["shards"] != FP["shards"]
    assert (
        fingerprint("trainer: {x: 1}\n", b"tok", ["a.tar:2", "b.tar:3"])["config"] != FP["config"]
    )


def test_agreeing_ranks_have_no_message():
    assert mismatch_message([FP, dict(FP), dict(FP)]) is None


def test_mismatch_names_the_part_and_the_ranks():
    other_tok = fingerprint("trainer: {}\n", b"other", ["a.tar:2", "b.tar:3"])
    message = mismatch_message([FP, FP, other_tok, other_tok])
    assert "tokenizer differs from rank 0 on rank(s) 2, 3" in message
    assert "config differs" not in message and "shards differs" not in message
    both = fingerprint("trainer: {y: 2}\n", b"tok", ["c.tar:1"])
    message = mismatch_message([FP, both])
    assert "config differs from rank 0 on rank(s) 1" in message
    assert "shards differs from rank 0 on rank(s) 1" in message


def test_train_shard_listing_is_relative_with_sample_counts(tmp_path):
    root = tiny_data_dir(tmp_path / "data", shards_per_lang=1, per_shard=2)
    listing = train_shard_listing(DataConfig(root=str(root)))
    assert listing == ["shards/train/de-000000.tar:2", "shards/train/en-000000.tar:2"]
    moved = tmp_path / "elsewhere"
    root.rename(moved)  # another node mounting the same data elsewhere agrees
    assert train_shard_listing(DataConfig(root=str(moved))) == listing
