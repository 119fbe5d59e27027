"""`DataStatsLogger`: the training stream's read / kept / skipped-by-reason counts in TensorBoard.

Every rank counts its own stream; the logged values are sums over ranks. The key set is fixed
(every reason, zero or not) because ranks that logged different keys would wait on different
collectives.
"""

from __future__ import annotations

import lightning as L
import torch

from whisfusion.data.stats import KEPT, READ, REASONS


class DataStatsLogger(L.Callback):
    """Logs `data/train/{read,kept,skipped/<reason>}` every `every_n_steps` optimizer steps."""

    def __init__(self, every_n_steps: int):
        self.every_n_steps = max(1, every_n_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps or trainer.datamodule is None:
            return
        counts = trainer.datamodule.stats().train
        names = [READ, KEPT, *REASONS]
        totals = torch.tensor([float(counts.get(n, 0)) for n in names], device=pl_module.device)
        totals = pl_module.all_gather(totals)
        if totals.dim() > 1:  # (world, names) under DDP
            totals = totals.sum(dim=0)
        for name, value in zip(names, totals.tolist(), strict=True):
            key = name if name in (READ, KEPT) else f"skipped/{name}"
            pl_module.log(f"data/train/{key}", value, rank_zero_only=True)
