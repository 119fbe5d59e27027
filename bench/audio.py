"""Benchmark audio: a few English sentences spoken by espeak-ng, as 16 kHz waveforms."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from whisfusion.audio import load_audio

# Short, medium and long utterances (about 3, 6 and 12 s).
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Speech recognition turns spoken words into text, one short sentence at a time.",
    "A non autoregressive decoder writes the whole transcript at once, then refines it in a "
    "few parallel steps, while an autoregressive decoder writes one token after another "
    "until it reaches the end.",
)


def speech_clips(sentences: tuple[str, ...] = SENTENCES) -> list[torch.Tensor]:
    """One (S,) float32 16 kHz waveform per sentence."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(
            "espeak-ng synthesizes the benchmark audio but is not installed: `make espeak` "
            "or `apt-get install espeak-ng`"
        )
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, sentence in enumerate(sentences):
            path = Path(tmp) / f"clip{i}.wav"
            subprocess.run(
                ["espeak-ng", "-w", str(path), sentence], check=True, capture_output=True
            )
            clips.append(load_audio(path))
    return clips
