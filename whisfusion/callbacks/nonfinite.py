"""Skipping optimizer steps whose loss is not finite, and stopping a run that keeps making them.

How a step is skipped (the choice, for Lightning 2.6.6 under DDP):
- Every micro-batch runs forward and backward as usual, whatever its loss: a non-finite loss
  back-propagates non-finite gradients, DDP averages them into every rank's gradients, and the
  gradient norm of the step is non-finite on every rank alike. The decision is made once per
  optimizer step from that norm (`gradient_norm`), so it needs no collective of its own and no
  host wait in the training step (returning None from `training_step` is refused by Lightning
  under DDP and would leave ranks waiting for each other's backward).
- The guard then drops the gradients before the optimizer runs (`grad = None`), and AdamW
  leaves parameters and moments untouched (momentum would otherwise keep moving the weights on
  a zero gradient). The step still counts: step counters, the learning-rate schedule and the
  step-derived seeds stay aligned on all ranks.
"""

from __future__ import annotations

import torch
from torch import nn


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss."""


def gradient_norm(module: nn.Module) -> torch.Tensor:
    """The 2-norm of all gradients of `module` (a 0-dim tensor on their device; 0 if none)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class NonFiniteGuard:
    """Counts skipped optimizer steps; raises after `max_in_row` consecutive ones.

    Usage per optimizer step: `flag()` when the step's (all-reduced) gradients are not finite,
    then `finish_step(step)` once before the optimizer runs; it returns True when this step's
    update must be dropped.
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
