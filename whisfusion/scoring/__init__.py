"""Scoring: normalization, corpus-level WER / CER per language and group, DDP-safe sums."""

from whisfusion.scoring.metrics import EditCounts, gather_counts, reduce_shards, utterance_counts
from whisfusion.scoring.normalizers import normalize, unit_for
from whisfusion.scoring.report import Report, score_utterances

__all__ = [
    "EditCounts",
    "Report",
    "gather_counts",
    "normalize",
    "reduce_shards",
    "score_utterances",
    "unit_for",
    "utterance_counts",
]
