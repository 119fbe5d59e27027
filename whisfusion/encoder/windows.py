"""Encoder windows: how much audio each clip is encoded with, and which output frames are real.

Pure functions over sample counts, shared by the encoder and anything that needs to know the
encoder's output length without running it (canvas sizing, caching).
"""

from __future__ import annotations

import torch

from whisfusion.audio import N_SAMPLES, N_SAMPLES_PER_TOKEN, SAMPLE_RATE

WINDOWS = ("full", "trim")


def trim_multiple_samples(trim_multiple_s: float) -> int:
    """The trim rounding step in samples; it must be a whole number of encoder frames (20 ms)."""
    exact = trim_multiple_s * SAMPLE_RATE
    samples = round(exact)
    if samples <= 0 or samples % N_SAMPLES_PER_TOKEN or abs(samples - exact) > 1e-6:
        raise ValueError(
            f"trim_multiple_s must be a positive multiple of "
            f"{N_SAMPLES_PER_TOKEN / SAMPLE_RATE} s, got {trim_multiple_s}"
        )
    return samples


def window_samples(lengths: torch.Tensor, window: str, multiple: int) -> torch.Tensor:
    """Samples each clip is encoded with.

    Args:
        lengths: shape (B,), samples of real audio per clip.
        window: "full" (always 30 s) or "trim" (the clip's own length rounded up to `multiple`
            samples, at least one multiple, at most 30 s).
        multiple: rounding step in samples, from `trim_multiple_samples`.

    Returns:
        windows: shape (B,), int64 sample counts, each a multiple of N_SAMPLES_PER_TOKEN.
    """
    if window not in WINDOWS:
        raise ValueError(f"encoder window must be one of {WINDOWS}, got {window!r}")
    if window == "full":
        return torch.full_like(lengths, N_SAMPLES, dtype=torch.long)
    steps = torch.div(lengths.long() + multiple - 1, multiple, rounding_mode="floor").clamp(min=1)
    return (steps * multiple).clamp(max=N_SAMPLES)


def valid_frames(lengths: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Encoder output frames that cover real audio: ceil(length / 320), within the window.

    Returns:
        counts: shape (B,), int64.
    """
    per_frame = N_SAMPLES_PER_TOKEN
    frames = torch.div(lengths.long() + per_frame - 1, per_frame, rounding_mode="floor")
    return torch.minimum(frames, windows // N_SAMPLES_PER_TOKEN)


def frame_mask(counts: torch.Tensor, frames: int) -> torch.Tensor:
    """(B,) counts -> (B, frames) bool, True on each row's first `count` frames."""
    return torch.arange(frames, device=counts.device)[None, :] < counts[:, None]


def trim_to_audio(
    features: torch.Tensor, valid: torch.Tensor, samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut encoder output to the frames that can hold audio of a batch padded to `samples`.

    features (B, T, E), valid (B, T) -> (B, T', E), (B, T') with T' = min(T, ceil(samples /
    320)). Every frame cut is invalid in every row (a 30 s window of a short batch), so a reader
    that masks invalid frames sees the same values; `samples` is the padded audio's width, a
    shape the host knows, so the cut does not wait for the device.
    """
    frames = min(features.shape[1], -(-samples // N_SAMPLES_PER_TOKEN))
    return features[:, :frames], valid[:, :frames]
