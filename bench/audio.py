"""Benchmark audio: a few English sentences spoken by espeak-ng, as 16 kHz waveforms.

Where espeak-ng is not installed (a bare GPU machine), deterministic synthetic clips of similar
lengths stand in: the decoders' cost does not depend on what the audio says, only
faster-whisper's transcripts do.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from whisfusion.audio import SAMPLE_RATE, load_audio

log = logging.getLogger(__name__)

# Short, medium and long utterances (about 3, 6 and 12 s).
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Speech recognition turns spoken words into text, one short sentence at a time.",
    "A non autoregressive decoder writes the whole transcript at once, then refines it in a "
    "few parallel steps, while an autoregressive decoder writes one token after another "
    "until it reaches the end.",
)
# Seconds of synthetic audio per sentence when espeak-ng is missing (its usual lengths).
SYNTHETIC_SECONDS = (2.8, 5.4, 10.3)


def speech_clips(sentences: tuple[str, ...] = SENTENCES) -> tuple[list[torch.Tensor], str]:
    """One (S,) float32 16 kHz waveform per sentence, and where they came from
    ("espeak-ng" or "synthetic")."""
    if shutil.which("espeak-ng") is None:
        log.warning("espeak-ng is not installed: timing synthetic audio (`make espeak`)")
        return [synthetic_clip(s) for s in SYNTHETIC_SECONDS[: len(sentences)]], "synthetic"
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, sentence in enumerate(sentences):
            path = Path(tmp) / f"clip{i}.wav"
            subprocess.run(
                ["espeak-ng", "-w", str(path), sentence], check=True, capture_output=True
            )
            clips.append(load_audio(path))
    return clips, "espeak-ng"


def synthetic_clip(seconds: float) -> torch.Tensor:
    """(S,) float32: a 150 Hz harmonic tone with a 4 Hz syllable-like envelope, plus noise."""
    t = torch.arange(round(seconds * SAMPLE_RATE), dtype=torch.float64) / SAMPLE_RATE
    voiced = sum(torch.sin(2 * math.pi * 150 * h * t) / h for h in range(1, 6))
    envelope = 0.5 * (1 - torch.cos(2 * math.pi * 4 * t))
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (0.1 * envelope * voiced + 0.003 * noise).float()
