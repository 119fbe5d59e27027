"""Training-time audio augmentation: shares of the clips played faster or slower, or sent
through a telephone line.

- Speed (`speed_change`, Ko et al. 2015): a clip resampled to play 0.9x or 1.1x as fast moves
  tempo and pitch together, a new speaker's rate and voice from the same recording; its target
  canvas is re-cut to the new duration (`resized_canvas`).
- Telephone (`telephone_line`): speech that users bring often comes through a phone or a VoIP
  bridge: sampled at 8 kHz (nothing above 4 kHz) and companded to 8 bits. Corpora of read or
  synthetic speech are wideband, so a decoder trained on them reads the frozen encoder's
  features of narrowband speech as a new domain.

`Augmenter` applies them to configured shares of the training stream (never to validation),
seeded with the stream.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch
import torchaudio.functional as AF

from whisfusion.canvas import canvas_length
from whisfusion.config import CanvasConfig
from whisfusion.data.audio_io import SAMPLE_RATE, to_mono_16k
from whisfusion.data.samples import Example

# G.711 narrowband telephony: 8 kHz sampling, 8-bit mu-law companding.
TELEPHONE_RATE = 8000
MU_LAW_CHANNELS = 256
# Speed factors of Kaldi's and Ko et al.'s speed perturbation: beyond +-10% speech sounds made.
SPEED_FACTORS = (0.9, 1.1)


def speed_change(audio: np.ndarray, factor: float) -> np.ndarray:
    """(S,) float32 audio at 16 kHz -> (about S / factor,) float32 at 16 kHz, played `factor`
    times as fast, its pitch moved by the same factor: the clip read as if it had been sampled
    at `factor` x 16 kHz, resampled to 16 kHz."""
    return to_mono_16k(audio[:, None], round(SAMPLE_RATE * factor))


def resized_canvas(canvas: torch.Tensor, length: int, eos_id: int) -> torch.Tensor | None:
    """A target canvas (L,) `[lang] text eos ...` at another length (L',): EOS padding added or
    cut; None when the text would not fit (at least one EOS must remain to mark its end)."""
    if length >= canvas.numel():
        return torch.cat([canvas, canvas.new_full((length - canvas.numel(),), eos_id)])
    return canvas[:length] if int(canvas[length - 1]) == eos_id else None


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


def _share(value: float, key: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{key} must be in [0, 1], got {value}")
    return value


class Augmenter:
    """Plays each training example at one of `SPEED_FACTORS` with probability `speed`, then
    sends it through `telephone_line` with probability `telephone`.

    A speed change that would leave the clip longer than `max_duration` or its text without
    room on the new canvas (`canvas`'s rule) is not made: the example goes on as it was read.
    """

    def __init__(
        self,
        telephone: float,
        speed: float = 0.0,
        canvas: CanvasConfig | None = None,
        eos_id: int | None = None,
        max_duration: float = float("inf"),
    ):
        self.telephone = _share(telephone, "data.augment_telephone")
        self.speed = _share(speed, "data.augment_speed")
        if self.speed and (canvas is None or eos_id is None):
            raise ValueError("data.augment_speed re-cuts target canvases: give the canvas rule")
        self.canvas, self.eos_id, self.max_duration = canvas, eos_id, max_duration

    @property
    def active(self) -> bool:
        return self.telephone > 0 or self.speed > 0

    def __call__(self, example: Example, rng: random.Random) -> Example:
        # a shut-off augmentation draws nothing, so the other one draws as in a run of it alone
        if self.speed and rng.random() < self.speed:
            example = self._played_at(example, rng.choice(SPEED_FACTORS))
        if self.telephone and rng.random() < self.telephone:
            line = telephone_line(example.audio)
            example = dataclasses.replace(example, audio=line, augmented=True)
        return example

    def _played_at(self, example: Example, factor: float) -> Example:
        audio = speed_change(example.audio, factor)
        duration = audio.size / SAMPLE_RATE
        if duration > self.max_duration:
            return example
        canvas = resized_canvas(example.canvas, canvas_length(duration, self.canvas), self.eos_id)
        if canvas is None:
            return example
        return dataclasses.replace(example, audio=audio, canvas=canvas, augmented=True)
