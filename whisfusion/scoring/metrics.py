"""Edit counts per utterance, summed into corpus-level error rates, also across DDP ranks.

Corpus WER is summed edits / summed reference words, never a mean of per-utterance rates.
Counts are kept per utterance id until the end, so that utterances a DistributedSampler repeats
on several ranks (it pads the last batch) are counted exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jiwer
import torch.distributed as dist

from whisfusion.scoring.normalizers import normalize, unit_for

# utterance id -> (language, counts)
PerUtterance = Mapping[str, tuple[str, "EditCounts"]]


@dataclass(frozen=True)
class EditCounts:
    """Substitutions, deletions, insertions, reference length (words or characters), utterances."""

    sub: int = 0
    dele: int = 0
    ins: int = 0
    ref_len: int = 0
    utts: int = 0

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(
            self.sub + other.sub,
            self.dele + other.dele,
            self.ins + other.ins,
            self.ref_len + other.ref_len,
            self.utts + other.utts,
        )

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def rate(self) -> float:
        """errors / reference length; a language whose references are all empty divides by 1,
        so hypothesised words there still show as errors instead of a division by zero."""
        return self.errors / max(self.ref_len, 1)


def utterance_counts(lang: str, ref: str, hyp: str, unit: str | None = None) -> EditCounts:
    """Edits of one normalized hypothesis against its normalized reference.

    Units: the language's own by default (words for most languages; characters with spaces
    removed for Chinese, Japanese and Korean); `unit="char"` counts characters for every
    language (spaces between words count as characters where the script has them).
    An empty reference makes every hypothesis unit an insertion; an empty hypothesis every
    reference unit a deletion.
    """
    ref_n, hyp_n = normalize(ref, lang), normalize(hyp, lang)
    if unit_for(lang) == "char":
        ref_n, hyp_n = ref_n.replace(" ", ""), hyp_n.replace(" ", "")
    if (unit or unit_for(lang)) == "char":
        out = jiwer.process_characters(ref_n, hyp_n)
    else:
        out = jiwer.process_words(ref_n, hyp_n)
    ref_len = out.hits + out.substitutions + out.deletions
    return EditCounts(out.substitutions, out.deletions, out.insertions, ref_len, 1)


def reduce_shards(shards: Sequence[PerUtterance]) -> dict[str, EditCounts]:
    """Per-language sums over the shards of several ranks, each utterance id counted once.

    A repeated id keeps its first occurrence in shard order (ranks may decode a padded repeat
    differently when sampling, so the first rank's decision stands).
    """
    seen: set[str] = set()
    totals: dict[str, EditCounts] = {}
    for shard in shards:
        for utt_id, (lang, counts) in shard.items():
            if utt_id in seen:
                continue
            seen.add(utt_id)
            totals[lang] = totals.get(lang, EditCounts()) + counts
    return totals


def gather_counts(per_utt: PerUtterance) -> dict[str, EditCounts]:
    """Per-language sums over all ranks (all_gather of every rank's per-utterance counts).

    Without an initialized process group (or with one rank) this is the local reduction.
    Every rank must call it (a collective) and every rank gets the same totals.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shards: list = [None] * dist.get_world_size()
        dist.all_gather_object(shards, dict(per_utt))
    else:
        shards = [per_utt]
    return reduce_shards(shards)
