"""Audio in the corpus format: 16 kHz mono, stored as 16-bit FLAC.

Decoding uses soundfile (libsndfile: WAV, FLAC, OGG/Opus, MP3); resampling uses torchaudio.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000


def read_audio(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Decode a file path or encoded bytes.

    Returns:
        samples: (S, C) float32 in [-1, 1].
        sample_rate: Hz.
    """
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    samples, rate = sf.read(handle, dtype="float32", always_2d=True)
    return samples, int(rate)


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """(S, C) audio at any rate -> (S',) float32 mono at `SAMPLE_RATE`."""
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if sample_rate != SAMPLE_RATE:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), sample_rate, SAMPLE_RATE)
        mono = wave.numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


def encode_flac(samples: np.ndarray) -> bytes:
    """(S,) float mono at `SAMPLE_RATE` -> 16-bit FLAC bytes.

    Clipped first: libsndfile does not clip by default, and resampling can overshoot 1.0.
    A 16-bit source decoded by `read_audio` round-trips sample-exactly.
    """
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
