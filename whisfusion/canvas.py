"""The text canvas: its length from the audio duration, and the target sequence on it.

A canvas is `[<|lang|>] t1 .. tn <|eos|> <|eos|> ...` of length L. Training and decoding use the
same length rule, so the model learns on the canvases it will later fill in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from whisfusion.config import CanvasConfig


def r_max_rule(p99_tokens_per_s: float) -> float:
    """The canvas rate of a corpus: the 99th percentile of its training utterances' text tokens
    per second, rounded up to 0.5 (a canvas then holds all but the fastest 1% of speech, which
    data preparation and the stream skip as canvas overflows)."""
    return math.ceil(p99_tokens_per_s * 2) / 2


def canvas_length(duration_s: float, cfg: CanvasConfig) -> int:
    """L = clip(ceil(duration * r_max) + margin, min_len, max_len), rounded up to `multiple`."""
    if cfg.r_max <= 0:
        raise ValueError(
            "model.canvas.r_max is not set: give it in the config or train on a data directory "
            "whose stats.json records it"
        )
    raw = math.ceil(duration_s * cfg.r_max) + cfg.margin
    length = min(max(raw, cfg.min_len), cfg.max_len)
    return min(-(-length // cfg.multiple) * cfg.multiple, cfg.max_len)


def build_canvas(
    text_ids: Sequence[int], lang_id: int | None, eos_id: int, length: int
) -> torch.Tensor:
    """Target canvas (length,) of `[lang] text_ids eos ...`.

    Raises:
        ValueError: the text does not fit (at least one EOS must remain to mark the end).
    """
    head = ([lang_id] if lang_id is not None else []) + list(text_ids)
    if len(head) >= length:
        raise ValueError(
            f"transcript of {len(text_ids)} tokens does not fit a canvas of {length} positions"
        )
    return torch.tensor(head + [eos_id] * (length - len(head)), dtype=torch.long)


def pad_canvases(
    canvases: Sequence[torch.Tensor], eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack canvases of different lengths.

    Returns:
        tokens: (B, L_max), EOS beyond each canvas.
        valid: (B, L_max) bool, True on each canvas's own positions.
    """
    lengths = torch.tensor([len(c) for c in canvases])
    l_max = int(lengths.max())
    tokens = torch.full((len(canvases), l_max), eos_id, dtype=torch.long)
    for i, c in enumerate(canvases):
        tokens[i, : len(c)] = c
    valid = torch.arange(l_max)[None, :] < lengths[:, None]
    return tokens, valid


def kept_width(content: torch.Tensor, margin: int) -> int:
    """Canvas width that keeps every row's content and `margin` positions after the last of
    them: content (R, L) bool (positions that are not EOS padding) -> min(L, last + 1 +
    margin), the last content position of any row."""
    length = content.shape[1]
    pos = torch.arange(1, length + 1, device=content.device)
    last = int((content * pos).max()) if content.numel() else 0
    return min(length, last + margin)


def per_utterance_at(per_utterance: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The entries of per_utterance (N, L, D) or (N, 1, D) at the positions `where` marks on
    utterance-major rows (N*K, L) bool -> (P, D), in `where`'s row-major order: each position
    takes its own utterance's entry (at its position, or the one entry of a (N, 1, D))."""
    rows, pos = where.nonzero(as_tuple=True)
    utterance = rows // (where.shape[0] // per_utterance.shape[0])
    if per_utterance.shape[1] == 1:
        pos = torch.zeros_like(pos)
    return per_utterance[utterance, pos]


def add_per_utterance(rows: torch.Tensor, per_utterance: torch.Tensor) -> torch.Tensor:
    """rows (N*K, L, D), utterance-major, plus per_utterance (N, L, D) or (N, 1, D) on each of
    its K rows, broadcast rather than copied K times."""
    n = per_utterance.shape[0]
    return (rows.view(n, -1, *rows.shape[1:]) + per_utterance[:, None]).view(rows.shape)
