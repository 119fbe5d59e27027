"""Resuming: after kill -9, and after SIGTERM on a plain (non-SLURM) run, the same command
continues from last.ckpt at the same step, with the optimizer, schedule and EMA it had, on
fresh data."""

import os
import signal

import pytest
import torch
from train_fixtures import finish, start_train, steps, tiny_data_dir, train_args, wait_for_step

from whisfusion.callbacks.ema import EMA_KEY

# Plain mean CE on high-mask canvases and batches of 8: a loss curve smooth enough to tell
# "resumed where it was" from "started over" after a few dozen steps.
FAST = [
    "trainer.max_steps=300",
    "optim.warmup_steps=2",
    "optim.lr=3e-3",
    "model.schedule.high_mask_share=1.0",
    "data.batch_size=8",
    "trainer.ema_decay=0.9",
]


def _mean(values) -> float:
    return sum(values) / len(values)


@pytest.mark.slow
def test_kill_9_then_the_same_command_continues(tmp_path):
    data = tiny_data_dir(tmp_path / "data")
    run_dir = tmp_path / "run"
    args = train_args(
        data, run_dir, *FAST, "trainer.checkpoint_every_n_steps=8", "data.num_workers=1"
    )
    first = tmp_path / "first"
    proc = start_train(args, first)
    wait_for_step(first, 27, [proc])
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its DataLoader worker, no warning
    proc.communicate()

    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)  # a complete file, not a partial one
    k = ckpt["global_step"]
    assert k % 8 == 0 and k >= 24
    assert ckpt["optimizer_states"][0]["state"] and ckpt["lr_schedulers"][0]["last_epoch"] == k
    assert set(ckpt[EMA_KEY]) == {
        key[len("model.decoder.") :]
        for key in ckpt["state_dict"]
        if key.startswith("model.decoder.")
    }

    again = tmp_path / "again"
    rc, out = finish(start_train(args, again, PROBE_STOP_AT=str(k + 4)))
    assert rc == 0, out[-3000:]
    before, after = steps(first), steps(again)
    assert [s["step"] for s in before[: k + 3]] == list(range(k + 3))
    assert [s["step"] for s in after] == [k, k + 1, k + 2, k + 3]
    # the schedule continues: the learning rate of step k is the one the first run had there
    assert after[0]["lr"] == before[k]["lr"]
    # the loss goes on from its level before the kill, far below the untrained one
    untrained, level = (
        _mean([s["loss"] for s in before[:2]]),
        _mean([s["loss"] for s in before[k - 4 : k]]),
    )
    resumed = _mean([s["loss"] for s in after])
    assert resumed < untrained - 1.5, (untrained, level, resumed)
    assert abs(resumed - level) < 1.0, (untrained, level, resumed)
    # fresh samples: neither the start of the first run nor what it drew after the checkpoint
    ids = [s["ids"] for s in after[:3]]
    assert ids != [s["ids"] for s in before[:3]]
    assert ids != [s["ids"] for s in before[k : k + 3]]


@pytest.mark.slow
def test_sigterm_saves_at_a_step_boundary_and_exits_cleanly(tmp_path):
    """With two micro-batches per step, the stop waits for the step to complete."""
    data = tiny_data_dir(tmp_path / "data", shards_per_lang=1)
    run_dir = tmp_path / "run"
    args = train_args(data, run_dir, *FAST, "trainer.checkpoint_every_n_steps=1000")
    args.append("trainer.global_batch_size=16")
    first = tmp_path / "first"
    proc = start_train(args, first)
    wait_for_step(first, 3, [proc])
    os.kill(proc.pid, signal.SIGTERM)
    rc, out = finish(proc)
    assert rc == 0, out[-3000:]
    assert "global batch 16 = 8 per device x 2 accumulated x 1 ranks" in out
    k = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert f"stopped by SIGTERM at step {k};" in out
    assert "run the same command again to resume" in out
    # saved right after the last complete step: none lost, no half step
    assert [s["step"] for s in steps(first)][-2:] == [k - 1, k - 1]
    assert "== validation (PDD) ==" not in out  # it left at once, no final validation

    again = tmp_path / "again"
    rc, out = finish(start_train(args, again, PROBE_STOP_AT=str(k + 2)))
    assert rc == 0, out[-3000:]
    assert [s["step"] for s in steps(again)] == [k, k, k + 1, k + 1]

    # run to the end: the closing save replaces the preemption's last.ckpt, no last-v1.ckpt
    rc, out = finish(start_train([*args, f"trainer.max_steps={k + 6}"], tmp_path / "end"))
    assert rc == 0, out[-3000:]
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("last*.ckpt"))
    assert saved == ["last.ckpt"], saved
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == k + 6
