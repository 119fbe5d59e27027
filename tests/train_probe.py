"""`whisfusion ...` with per-rank probes, for the multi-process training tests.

    PROBE_DIR=/tmp/p python tests/train_probe.py train --config configs/tiny.yaml ...

Writes into $PROBE_DIR, one line per training step and rank, flushed at once (so a process
killed with SIGKILL leaves every finished line):
    steps-rank<R>.jsonl       {"step", "loss", "lr", "ids", "skipped", "mask_seed"}: the global
                              step the batch trains, its loss, the learning rate, the utterance
                              ids of the batch, non-finite steps skipped before it, the seed of
                              the generator its masks were drawn with
    start-rank<R>.json        {"step", "environment", "auto_requeue"} at train start
    decoder-start-rank<R>.pt  the decoder's weights when training starts
    decoder-rank<R>.pt        the decoder's weights when training ends
$PROBE_STOP_AT=N stops training (cleanly) once global step N is reached, so a resumed run can
be cut short without changing its command line, which would change what it resumes.
$PROBE_NAN=R:S makes the loss of rank R at global step S NaN (its audio becomes NaN).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from whisfusion import cli
from whisfusion.lightning_module import WhisfusionModule
from whisfusion.schedule import MaskSchedule

OUT = Path(os.environ["PROBE_DIR"])
STOP_AT = int(os.environ.get("PROBE_STOP_AT", "0"))
NAN_AT = (
    tuple(int(x) for x in os.environ["PROBE_NAN"].split(":")) if "PROBE_NAN" in os.environ else None
)


def _append(name: str, record: dict) -> None:
    with open(OUT / name, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


_MASK_SEED: list[int | None] = [None]


def corrupt(self, tokens, valid, mask_id, step, generator=None):
    _MASK_SEED[0] = None if generator is None else generator.initial_seed()
    return _corrupt(self, tokens, valid, mask_id, step, generator)


def training_step(self, batch, batch_idx):
    step = self.global_step
    if NAN_AT == (self.global_rank, step):
        batch = {**batch, "audio": batch["audio"] * float("nan")}
    loss = _training_step(self, batch, batch_idx)
    _append(
        f"steps-rank{self.global_rank}.jsonl",
        {
            "step": step,
            "loss": float(loss.detach()),
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            "ids": list(batch["ids"]),
            "skipped": self.nonfinite.skipped,
            "mask_seed": _MASK_SEED[0],
        },
    )
    return loss


def on_train_start(self):
    _on_train_start(self)
    env = getattr(self.trainer.strategy, "cluster_environment", None)
    record = {
        "step": self.global_step,
        "environment": type(env).__name__,
        "auto_requeue": getattr(env, "auto_requeue", None),
    }
    (OUT / f"start-rank{self.global_rank}.json").write_text(json.dumps(record))
    decoder = self.model.decoder.state_dict()
    torch.save(decoder, OUT / f"decoder-start-rank{self.global_rank}.pt")


def on_train_batch_end(self, outputs, batch, batch_idx):
    if STOP_AT and self.global_step >= STOP_AT:
        self.trainer.should_stop = True


def on_train_end(self):
    torch.save(self.model.decoder.state_dict(), OUT / f"decoder-rank{self.global_rank}.pt")


_corrupt = MaskSchedule.corrupt
MaskSchedule.corrupt = corrupt
_training_step = WhisfusionModule.training_step
_on_train_start = WhisfusionModule.on_train_start
WhisfusionModule.training_step = training_step
WhisfusionModule.on_train_start = on_train_start
WhisfusionModule.on_train_batch_end = on_train_batch_end
WhisfusionModule.on_train_end = on_train_end

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    sys.exit(cli.main(sys.argv[1:]))
