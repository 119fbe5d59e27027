"""Audio front-end: decode files to mono 16 kHz, and compute Whisper's log-mel spectrogram.

The log-mel follows openai-whisper's `log_mel_spectrogram` step for step (and so matches
transformers' `WhisperFeatureExtractor`): the frozen encoder only understands features made
exactly the way it was trained on.
"""

from __future__ import annotations

import functools
import os
from typing import BinaryIO

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
import torchaudio.functional

SAMPLE_RATE = 16000
# STFT size (25 ms) and hop (10 ms) in samples.
N_FFT = 400
HOP_LENGTH = 160
# Whisper's fixed input window in seconds, in samples and in mel frames.
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP_LENGTH
# The encoder's second convolution has stride 2: one output frame per 2 mel frames (20 ms).
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2

AudioSource = str | os.PathLike | BinaryIO
ArrayLike = torch.Tensor | np.ndarray


def load_audio(source: AudioSource) -> torch.Tensor:
    """Decode an audio file (or a binary file object) to mono float32 at 16 kHz.

    Channels are averaged; other sample rates are resampled with torchaudio's sinc resampler.

    Returns:
        waveform: shape (S,), float32, nominally in [-1, 1].
    """
    name = (
        os.fspath(source)
        if isinstance(source, (str, os.PathLike))
        else getattr(source, "name", repr(source))
    )
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise FileNotFoundError(f"audio file not found: {name}")
    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"cannot decode audio file {name}: {err}") from err
    waveform = torch.from_numpy(data).mean(dim=1)
    if rate != SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, rate, SAMPLE_RATE)
    return waveform


def pad_or_trim(audio: ArrayLike, length: int = N_SAMPLES) -> ArrayLike:
    """Zero-pad or cut the last axis to `length` (a tensor stays a tensor, an array an array)."""
    size = audio.shape[-1]
    if isinstance(audio, torch.Tensor):
        return audio[..., :length] if size >= length else F.pad(audio, (0, length - size))
    if size >= length:
        return audio[..., :length]
    widths = [(0, 0)] * (audio.ndim - 1) + [(0, length - size)]
    return np.pad(audio, widths)


@functools.cache
def mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney-normalised, Slaney-scale mel filters as librosa builds them for Whisper.

    Returns:
        filters: shape (n_mels, N_FFT // 2 + 1), float32, on CPU.
    """
    return torchaudio.functional.melscale_fbanks(
        n_freqs=N_FFT // 2 + 1,
        f_min=0.0,
        f_max=SAMPLE_RATE / 2,
        n_mels=n_mels,
        sample_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    ).T.contiguous()


def log_mel_spectrogram(audio: ArrayLike, n_mels: int = 80, padding: int = 0) -> torch.Tensor:
    """Whisper's log-mel spectrogram.

    Args:
        audio: shape (S,) or (B, S), 16 kHz float waveform(s); tensor or numpy array.
        n_mels: mel bins (80 for Whisper up to large-v2, 128 for large-v3).
        padding: zeros appended to the waveform before the STFT.

    Returns:
        log_mel: shape (n_mels, S // HOP_LENGTH) or (B, n_mels, S // HOP_LENGTH), float32, on the
        waveform's device. The (max - 8) floor is taken per utterance.
    """
    audio = torch.as_tensor(audio, dtype=torch.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must have shape (S,) or (B, S), got {tuple(audio.shape)}")
    if padding > 0:
        audio = F.pad(audio, (0, padding))
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    # The last frame only sees reflected padding past the end of the signal; Whisper drops it.
    power = stft[..., :-1].abs() ** 2
    mel = mel_filters(n_mels).to(audio.device) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0
