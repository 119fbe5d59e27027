"""Static shapes for decoding: canvas widths in a few buckets, encoder frames cut to the audio.

A decoding batch's canvas is as wide as its longest utterance's canvas (`canvas_for`), and its
encoder output as long as the encoder window. Both are padding the decoder masks:

- `pad_to_bucket` widens the canvas to the next bucket with invalid positions (EOS, masked as
  keys, never predicted or committed), so a captured or compiled denoiser sees a few shapes
  rather than one per canvas length. Valid positions keep their absolute positions, so their
  logits are unchanged up to rounding; the sampling noise is drawn over the wider shape, so
  sampled candidates differ from an unpadded run in which noise they got (greedy rows do not).
- `trim_frames` drops the frames past the batch's longest valid frame count before the
  cross-attention cache is built: exact, since invalid frames are masked out of every
  attention and the alignment head's output at a valid frame does not read them. With the
  "full" 30 s window a 3 s clip then attends to 150 frames instead of 1500.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def bucket_length(length: int, buckets: Sequence[int], max_len: int) -> int:
    """The smallest bucket in [length, max_len]; else `max_len` (`length` itself if even that
    is shorter: the canvas is never cut)."""
    return min([b for b in buckets if length <= b <= max_len] + [max(length, max_len)])


def pad_to_bucket(
    canvas: torch.Tensor, valid: torch.Tensor, buckets: Sequence[int], max_len: int, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """canvas (N, L) long, valid (N, L) bool -> both (N, bucket_length(L)), the new columns
    EOS and invalid. No buckets: unchanged."""
    if not buckets:
        return canvas, valid
    extra = bucket_length(canvas.shape[1], buckets, max_len) - canvas.shape[1]
    if extra <= 0:
        return canvas, valid
    pad = (0, extra)
    return (
        torch.nn.functional.pad(canvas, pad, value=eos_id),
        torch.nn.functional.pad(valid, pad, value=False),
    )


def length_groups(lengths: Sequence[int], max_padding: float) -> list[list[int]]:
    """Indices of a batch's canvases in groups of similar length, longest first: each canvas
    of a group is padded by at most `max_padding` of the group's longest canvas (its width).
    max_padding >= 1: one group."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[groups[-1][0]] - lengths[i] <= max_padding * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def trim_frames(
    features: torch.Tensor, valid: torch.Tensor, multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """features (N, S, E), valid (N, S) bool -> both cut to S' frames: the longest valid frame
    count of the batch rounded up to `multiple` (at most S, at least 1)."""
    longest = int(valid.sum(dim=1).max()) if valid.numel() else 0
    keep = min(features.shape[1], max(1, -(-longest // multiple) * multiple))
    return features[:, :keep], valid[:, :keep]
