"""The same config trains the same way with gradient accumulation: cadences count optimizer
steps, every micro-batch draws its own masks, and a resumed run draws what the uninterrupted
run would have."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from train_fixtures import finish, start_train, steps, tiny_data_dir, train_args

from whisfusion.distributed import BATCH_PLAN_KEY
from whisfusion.seeding import mixed_seed

# 8 utterances per optimizer step, at most 6 per device = 2 micro-batches of 4 on one device
ACCUMULATE_2 = [
    "trainer.global_batch_size=8",
    "data.batch_size=6",
    "validation.every_n_steps=3",
    "trainer.checkpoint_every_n_steps=3",
    "trainer.max_steps=6",
    "decode.steps=2",
]


def test_mixed_seeds_do_not_collide():
    keys = itertools.product([0, 1234], range(64), range(300), range(4))
    seeds = [mixed_seed(*k) for k in keys]
    assert len(set(seeds)) == len(seeds)
    # the linear mix this replaces collides: rank r, step s+10_007 == rank r+1, step s
    assert mixed_seed(1234, 0, 10_007, 0) != mixed_seed(1234, 1, 0, 0)


def _scalar_steps(run_dir, tag: str) -> list[int]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


@pytest.mark.slow
def test_accumulation_counts_optimizer_steps_and_resumes_the_same_draws(tmp_path):
    data = tiny_data_dir(tmp_path / "data")
    whole = tmp_path / "whole"
    rc, out = finish(start_train(train_args(data, whole, *ACCUMULATE_2), tmp_path / "p-whole"))
    assert rc == 0, out[-3000:]
    # Validation after optimizer steps 3 and 6 (not after micro-batches 3, 6, 9, 12). A scalar's
    # TensorBoard step is the 0-based index of the optimizer step it follows, as for train/*.
    assert _scalar_steps(whole, "train/loss") == [0, 1, 2, 3, 4, 5]
    assert _scalar_steps(whole, "val/loss") == [2, 5]
    plan = {"per_device": 4, "accumulate": 2, "world_size": 1, "global_batch": 8}
    assert json.loads((whole / "batch_plan.json").read_text()) == plan
    ckpt = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt[BATCH_PLAN_KEY] == plan and ckpt["global_step"] == 6
    assert "\n  batch_size: 6\n" in (whole / "config.yaml").read_text()  # as given
    done = steps(tmp_path / "p-whole")
    assert [s["step"] for s in done] == [k // 2 for k in range(12)]
    seeds = [s["mask_seed"] for s in done]
    assert len(set(seeds)) == 12  # the two micro-batches of a step draw different masks

    # the same run stopped after step 3 and started again: the same draws from step 3 on
    cut = tmp_path / "cut"
    args = train_args(data, cut, *ACCUMULATE_2)
    rc, out = finish(start_train(args, tmp_path / "p-cut1", PROBE_STOP_AT="3"))
    assert rc == 0, out[-3000:]
    rc, out = finish(start_train(args, tmp_path / "p-cut2"))
    assert rc == 0, out[-3000:]
    resumed = steps(tmp_path / "p-cut2")
    assert [s["step"] for s in resumed] == [3, 3, 4, 4, 5, 5]
    assert [s["mask_seed"] for s in resumed] == seeds[6:]
