"""Opening a Whisper-started decoder's self-attention from causal to bidirectional over the
first optimizer steps (`model.decoder.attention_anneal_steps`), as DiffuLLaMA adapts an
autoregressive model: the blocks first denoise with the left context they were trained on, then
learn to read the right context as it appears."""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger(__name__)


class AttentionAnneal(L.Callback):
    """Before each training batch, the decoder's `future_share` (the chance that a position
    sees a given later one) is global_step / steps, capped at 1; a resumed run continues from
    its restored step. A run shorter than `steps` anneals over all of its `max_steps`."""

    def __init__(self, steps: int, max_steps: int):
        if steps < 1:
            raise ValueError(f"model.decoder.attention_anneal_steps must be positive, got {steps}")
        if 0 < max_steps < steps:
            log.warning(
                "model.decoder.attention_anneal_steps=%d exceeds trainer.max_steps=%d: "
                "annealing over all %d steps",
                steps,
                max_steps,
                max_steps,
            )
            steps = max_steps
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.model.decoder.future_share = min(1.0, trainer.global_step / self.steps)
