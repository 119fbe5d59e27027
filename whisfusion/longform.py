"""Audio longer than one encoder window: overlapping chunks, and their transcripts merged;
or, for a model trained on short clips, segments cut at pauses.

The audio is cut into windows of `window_s` seconds that overlap by `overlap_s`; each is
transcribed on its own. Two neighbouring transcripts both contain the words spoken in the
overlap, so the merge finds the longest run of units the tail of one shares with the head of the
next and joins them in the middle of that run: the earlier chunk's words before it, the later
chunk's words after it. Words at a chunk's cut edge (often clipped, so garbled) fall on the
discarded side of the join. Text alone cannot place speech that repeats itself verbatim for
longer than the overlap: the merge may then join at the wrong repeat.

Segments (`plan_segments`, `decode.segment_s`): audio longer than `segment_s` is cut, without
overlap, at the quietest moment of the later part of each `segment_s` window (a pause between
words or sentences), and the segments' transcripts are joined in order. A model trained on
single sentences then reads each one on the canvas length it was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from whisfusion.audio import CHUNK_LENGTH, SAMPLE_RATE
from whisfusion.scoring.normalizers import UNSPACED_LANGUAGES, join_units, split_units

# Seconds shared by neighbouring chunks: enough to hold a few words on both sides of a cut.
OVERLAP_S = 5.0
# The overlap region is searched over this many times its expected number of units (speech is
# not uniform in rate), plus _SEARCH_SLACK units.
_SEARCH_FACTOR = 2.0
_SEARCH_SLACK = 8
# Shortest shared run taken as evidence of overlap: a single common word ("the") shared by the
# tail and head of a silent overlap would otherwise delete the words around it. The price: an
# overlap holding a single word keeps it twice.
_MIN_RUN = {"word": 2, "char": 3}
# A segment's cut is sought in the last half of its window, so that a pause near a segment's
# start does not leave a sliver of a segment.
_MIN_SEGMENT_SHARE = 0.5
# The loudness curve a cut is placed on: RMS over 20 ms frames, averaged over 5 of them (the
# 100 ms of a short pause), so one quiet frame inside a word does not pass for a pause.
_FRAME_S = 0.02
_SMOOTH_FRAMES = 5


def plan_chunks(
    num_samples: int,
    window_s: float = float(CHUNK_LENGTH),
    overlap_s: float = OVERLAP_S,
    sr: int = SAMPLE_RATE,
) -> list[tuple[int, int]]:
    """(start, end) sample ranges of windows stepping by `window_s - overlap_s`.

    The last window ends at `num_samples` (it may be shorter). Audio no longer than one window
    (including empty audio) is a single chunk `(0, num_samples)`.
    """
    window, overlap = round(window_s * sr), round(overlap_s * sr)
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if window <= 0 or not 0 <= overlap < window:
        raise ValueError(f"need 0 <= overlap_s < window_s, got {overlap_s} and {window_s}")
    chunks = [(0, min(window, num_samples))]
    while chunks[-1][1] < num_samples:
        start = chunks[-1][0] + window - overlap
        chunks.append((start, min(start + window, num_samples)))
    return chunks


def plan_segments(
    audio: torch.Tensor, segment_s: float, sr: int = SAMPLE_RATE
) -> list[tuple[int, int]]:
    """(start, end) sample ranges of at most `segment_s` seconds covering `audio` (N,), each
    cut at the quietest 100 ms in the last half of its window; one range if it fits."""
    if not 0 < segment_s <= CHUNK_LENGTH:
        raise ValueError(f"segment_s must lie in (0, {CHUNK_LENGTH}], got {segment_s}")
    n, window, frame = audio.numel(), round(segment_s * sr), round(_FRAME_S * sr)
    if n <= window:
        return [(0, n)]
    frames = audio[: n - n % frame].float().reshape(-1, frame)
    rms = frames.square().mean(dim=1).sqrt()
    loudness = F.avg_pool1d(rms[None, None], _SMOOTH_FRAMES, 1, _SMOOTH_FRAMES // 2, False)[0, 0]
    spans, start = [], 0
    while n - start > window:
        lo = (start + round(_MIN_SEGMENT_SHARE * window)) // frame
        hi = (start + window) // frame  # frames wholly inside the window
        cut = (lo + int(loudness[lo:hi].argmin())) * frame + frame // 2
        spans.append((start, cut))
        start = cut
    return spans + [(start, n)]


def join_segment_texts(texts: Sequence[str], language: str | None) -> str:
    """The transcripts of consecutive segments, in order: with a space between them, without
    one in languages written without spaces (zh, ja)."""
    sep = "" if language in UNSPACED_LANGUAGES else " "
    return sep.join(t.strip() for t in texts if t.strip())


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> tuple[int, int, int]:
    """(i, j, n) with a[i:i+n] == b[j:j+n] and n maximal (0 if nothing is shared).

    Among runs of equal length the one nearest the seam wins: the least units of `a` after it
    plus units of `b` before it.
    """
    best = (0, 0, 0)
    best_key = (0, 0)
    run = [0] * (len(b) + 1)  # run[j + 1]: common run ending at a[i], b[j]
    for i in range(len(a)):
        prev = 0
        for j in range(len(b)):
            cur = run[j + 1]
            run[j + 1] = prev + 1 if a[i] == b[j] else 0
            prev = cur
            n = run[j + 1]
            if n:
                key = (n, -((len(a) - 1 - i) + (j + 1 - n)))
                if key > best_key:
                    best_key, best = key, (i + 1 - n, j + 1 - n, n)
    return best


def merge_pair(a: list[str], b: list[str], search: int, min_run: int) -> list[str]:
    """Units of `a` followed by `b`, their shared overlap (within `search` units) kept once.

    Without a shared run of `min_run` units (the overlap held no speech in one of them, or the
    two disagree throughout) the two are concatenated.
    """
    if not a or not b:
        return a + b
    offset = max(0, len(a) - search)
    i, j, n = longest_common_run(a[offset:], b[:search])
    if n < min_run:
        return a + b
    cut = n // 2
    return a[: offset + i + cut] + b[j + cut :]


def merge_chunk_texts(
    texts: Sequence[str], unit: str = "word", overlap_share: float = OVERLAP_S / CHUNK_LENGTH
) -> str:
    """One transcript from the transcripts of consecutive overlapping chunks.

    Args:
        texts: transcripts of the chunks of `plan_chunks`, in order.
        unit: "word", or "char" for Chinese / Japanese / Korean.
        overlap_share: overlap / window duration; sizes the region searched for the seam.
    """
    merged: list[str] = []
    prev_len = 0
    for text in texts:
        units = split_units(text, unit)
        search = math.ceil(_SEARCH_FACTOR * overlap_share * prev_len) + _SEARCH_SLACK
        merged = merge_pair(merged, units, search, _MIN_RUN[unit])
        prev_len = len(units)
    return join_units(merged, unit)
