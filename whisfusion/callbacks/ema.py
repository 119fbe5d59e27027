"""Exponential moving average (EMA) of the decoder weights, used for validation and inference.

After every optimizer step: ema <- decay * ema + (1 - decay) * weights, in float32 on the
weights' device. Validation runs on the EMA weights (swapped in at validation start, swapped
back at its end). Checkpoints carry them as a top-level "ema_state_dict" with the keys of
`Whisfusion.decoder.state_dict()`, which `Whisfusion.from_checkpoint` prefers; a resumed run
restores them instead of starting a fresh average.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from lightning.pytorch import Callback

# Top-level checkpoint key of the EMA decoder weights (read by `Whisfusion.from_checkpoint`).
EMA_KEY = "ema_state_dict"
# Prefix of the decoder's weights in the LightningModule's state_dict.
DECODER_PREFIX = "model.decoder."


def ema_update(
    ema: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], decay: float
) -> None:
    """In place: float entries move toward `weights` by (1 - decay); other entries are copied."""
    for name, value in weights.items():
        if value.is_floating_point():
            ema[name].lerp_(value.detach().to(ema[name].dtype), 1.0 - decay)
        else:
            ema[name].copy_(value)


class EMA(Callback):
    """EMA of `pl_module.model.decoder`, swapped in for validation and saved in checkpoints.

    Args:
        decay: weight of the old average per optimizer step (e.g. 0.999: an average over about
            the last 1000 steps).
    """

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._ema: dict[str, torch.Tensor] | None = None
        self._loaded: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None
        self._last_step = -1

    @staticmethod
    def _decoder(pl_module) -> torch.nn.Module:
        return pl_module.model.decoder

    def _averages(self, pl_module) -> dict[str, torch.Tensor]:
        """The EMA tensors, created on first use: from a restored checkpoint, else the weights."""
        if self._ema is None:
            state = self._decoder(pl_module).state_dict()
            source = self._loaded if self._loaded is not None else state
            missing = set(state) ^ set(source)
            if missing:
                raise RuntimeError(
                    f"checkpoint '{EMA_KEY}' does not match the decoder: keys {sorted(missing)[:5]}"
                )
            self._ema = {
                k: source[k]
                .detach()
                .to(state[k].device, torch.float32 if v.is_floating_point() else v.dtype)
                .clone()
                for k, v in state.items()
            }
            self._loaded = None
        return self._ema

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Once per optimizer step: with gradient accumulation several batches share one step.
        if trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        with torch.no_grad():
            ema_update(self._averages(pl_module), self._decoder(pl_module).state_dict(), self.decay)

    @contextmanager
    def applied(self, pl_module):
        """Run the block with the EMA weights in the decoder; the trained ones come back after."""
        self.swap_in(pl_module)
        try:
            yield
        finally:
            self.swap_out(pl_module)

    def swap_in(self, pl_module) -> None:
        decoder = self._decoder(pl_module)
        if self._backup is not None:
            return
        self._backup = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
        decoder.load_state_dict(self._averages(pl_module))

    def swap_out(self, pl_module) -> None:
        if self._backup is None:
            return
        self._decoder(pl_module).load_state_dict(self._backup)
        self._backup = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self.swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.swap_out(pl_module)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.swap_out(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[EMA_KEY] = dict(self._averages(pl_module))
        if self._backup is not None:
            # Saved while validating: the decoder holds the EMA, the trained weights are aside.
            state = checkpoint["state_dict"]
            for k, v in self._backup.items():
                state[DECODER_PREFIX + k] = v

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Kept until the first use: the module may not be on its device yet.
        if EMA_KEY in checkpoint:
            self._loaded = checkpoint[EMA_KEY]
            self._ema = None
