"""Skipping optimizer steps whose loss is not finite, and stopping a run that keeps making them.

How a step is skipped (the choice, for Lightning 2.6.6 under DDP):
- Returning None from `training_step` is refused by Lightning when world_size > 1 (it raises
  "Skipping the `training_step` by returning None in distributed training is not supported"),
  and would leave DDP ranks that did run backward waiting for the ones that did not.
- Zeroing the loss (`loss * 0`) does not help: back-propagating 0 through a graph that holds
  inf / NaN gives 0 * inf = NaN gradients.
- So the step returns `detached_zero_loss(module)`: a zero built from the parameters alone, off
  the broken graph. Backward then gives every parameter an exact zero gradient, so every DDP
  bucket is reduced on every rank as usual. The guard then drops the gradients before the
  optimizer runs (`grad = None`), and AdamW leaves parameters and moments untouched (momentum
  would otherwise keep moving the weights on a zero gradient). The step still counts: step
  counters, the learning-rate schedule and the step-derived seeds stay aligned on all ranks.
Ranks must agree, or one rank drops its update while another applies it: the caller reduces the
"loss is finite" flag over all ranks before deciding (`WhisfusionModule.training_step`).
"""

from __future__ import annotations

import torch
from torch import nn


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss."""


def detached_zero_loss(module: nn.Module) -> torch.Tensor:
    """A scalar 0 whose backward gives each trainable parameter of `module` a zero gradient."""
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0


class NonFiniteGuard:
    """Counts skipped optimizer steps; raises after `max_in_row` consecutive ones.

    Usage per optimizer step: `flag()` for each micro-batch whose loss was not finite (agreed
    across ranks), then `finish_step(step)` once before the optimizer runs; it returns True when
    this step's update must be dropped. A step with any non-finite micro-batch is dropped whole.
    """

    def __init__(self, max_in_row: int):
        if max_in_row < 1:
            raise ValueError(f"trainer.max_nonfinite_in_row must be at least 1, got {max_in_row}")
        self.max_in_row = max_in_row
        # Steps skipped over the whole run (restored on resume).
        self.skipped = 0
        # Consecutive skipped steps up to now.
        self.in_row = 0
        self._pending = False

    def flag(self) -> None:
        self._pending = True

    def finish_step(self, step: int) -> bool:
        skip, self._pending = self._pending, False
        if not skip:
            self.in_row = 0
            return False
        self.skipped += 1
        self.in_row += 1
        if self.in_row >= self.max_in_row:
            raise NonFiniteLossError(
                f"stopping at step {step}: the loss was not finite for {self.in_row} optimizer "
                f"steps in a row (steps {step - self.in_row + 1}..{step}; {self.skipped} skipped "
                f"in all; trainer.max_nonfinite_in_row={self.max_in_row}). checkpoints/last.ckpt "
                "in the run directory holds the last good state: lower optim.lr or lengthen "
                "optim.warmup_steps, or look for broken samples in the data of these steps"
            )
        return True

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_row": self.in_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.in_row = int(state["skipped"]), int(state["in_row"])
