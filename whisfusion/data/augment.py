"""Training-time audio augmentation: a share of the clips sent through a telephone line.

Speech that users bring often comes through a phone or a VoIP bridge: sampled at 8 kHz (nothing
above 4 kHz) and companded to 8 bits. Corpora of read or synthetic speech are wideband, so a
decoder trained on them reads the frozen encoder's features of narrowband speech as a new
domain. `telephone_line` simulates the channel; `Augmenter` applies it to a configured share of
the training stream (never to validation), seeded with the stream.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch
import torchaudio.functional as AF

from whisfusion.data.audio_io import SAMPLE_RATE
from whisfusion.data.samples import Example

# G.711 narrowband telephony: 8 kHz sampling, 8-bit mu-law companding.
TELEPHONE_RATE = 8000
MU_LAW_CHANNELS = 256


def telephone_line(audio: np.ndarray) -> np.ndarray:
    """(S,) float32 audio at 16 kHz -> (S,) float32 at 16 kHz, as heard through an 8 kHz
    mu-law telephone line (band-limited to 4 kHz, 8-bit companding noise).

    The length is kept, so the clip's duration and token canvas do not change.
    """
    wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    narrow = AF.resample(wave, SAMPLE_RATE, TELEPHONE_RATE)
    coded = AF.mu_law_encoding(narrow.clamp(-1.0, 1.0), MU_LAW_CHANNELS)
    line = AF.resample(AF.mu_law_decoding(coded, MU_LAW_CHANNELS), TELEPHONE_RATE, SAMPLE_RATE)
    out = np.zeros(audio.shape[0], dtype=np.float32)
    n = min(out.size, line.numel())
    out[:n] = line[:n].numpy()
    return out


class Augmenter:
    """Sends each training example through `telephone_line` with probability `telephone`."""

    def __init__(self, telephone: float):
        if not 0.0 <= telephone <= 1.0:
            raise ValueError(f"data.augment_telephone must be in [0, 1], got {telephone}")
        self.telephone = telephone

    @property
    def active(self) -> bool:
        return self.telephone > 0

    def __call__(self, example: Example, rng: random.Random) -> Example:
        if rng.random() >= self.telephone:
            return example
        return dataclasses.replace(example, audio=telephone_line(example.audio), augmented=True)
