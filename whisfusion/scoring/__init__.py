"""Scoring: normalization, corpus-level WER / CER per language and group, DDP-safe sums."""

from whisfusion.scoring.metrics import EditCounts, gather_counts, reduce_shards, utterance_counts
from whisfusion.scoring.normalizers import normalize, unit_for
from whisfusion.scoring.report import Report, cer_line, score_in_both_units, score_utterances

__all__ = [
    "EditCounts",
    "Report",
    "cer_line",
    "gather_counts",
    "normalize",
    "reduce_shards",
    "score_in_both_units",
    "score_utterances",
    "unit_for",
    "utterance_counts",
]
