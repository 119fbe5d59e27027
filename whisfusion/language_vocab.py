"""Per-language output vocabularies: how often each language's training transcripts use a token.

All languages share one tokenizer, so nothing stops a model from writing a Hangul syllable into
German or a Chinese particle into English. Data preparation's tokenizer stage counts every token
of every training transcript per language (`language_tokens.json`, beside `tokenizer.model`).
When an utterance is decoded with a given language and `decode.language_vocab_min_count` > 0,
tokens that language used fewer times are blocked: the sampler applies a `LanguageFilter` to the
decoder's logits, and the alignment head's reading (`whisfusion.prior`) renormalizes over the
same tokens (the language-specific output masks of multilingual CTC systems). An utterance whose
language is predicted is not restricted.

The restriction functions are pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from whisfusion.canvas import per_utterance_at

FILE_NAME = "language_tokens.json"
# The score of a blocked token: exp(-1e4) is 0 in float32, yet the value stays finite, so
# weighted sums of log-probabilities (the logit fusion) never meet 0 * inf.
BLOCKED = -1.0e4


@dataclass
class LanguageVocabulary:
    """Token counts of the training transcripts, one row per language of the tokenizer.

    languages: the tokenizer's languages, in its order; counts: (n_languages, V) int64.
    """

    languages: list[str]
    counts: torch.Tensor

    def __post_init__(self):
        if self.counts.dim() != 2 or self.counts.shape[0] != len(self.languages):
            raise ValueError(
                f"token counts of shape {tuple(self.counts.shape)} do not give one row to each "
                f"of {len(self.languages)} languages"
            )

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, Mapping[int, int]], languages: Sequence[str], vocab_size: int
    ) -> LanguageVocabulary:
        """From {language: {token id: count}}; a language without counts gets a row of zeros."""
        table = torch.zeros(len(languages), vocab_size, dtype=torch.int64)
        for row, lang in enumerate(languages):
            for token, n in counts.get(lang, {}).items():
                table[row, int(token)] = int(n)
        return cls(list(languages), table)

    def to_dict(self) -> dict:
        """The JSON form of `from_file`: {"vocab_size": V, "counts": {language: {id: count}}}."""
        rows = {
            lang: {str(int(i)): int(self.counts[r, i]) for i in self.counts[r].nonzero().flatten()}
            for r, lang in enumerate(self.languages)
        }
        return {"vocab_size": self.counts.shape[1], "counts": rows}

    @classmethod
    def from_file(cls, path: str | Path, languages: Sequence[str], vocab_size: int):
        """Read `to_dict`'s JSON for a tokenizer of `languages` and `vocab_size` classes.

        Raises:
            ValueError: the file is not such JSON, or was counted with another vocabulary.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            counts, size = data["counts"], int(data["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a language token count file ({err})") from None
        if size != vocab_size:
            raise ValueError(
                f"{path}: counted over {size} tokens, but the tokenizer has {vocab_size}"
            )
        return cls.from_counts(counts, languages, vocab_size)

    def allowed(
        self, languages: Sequence[str | None], min_count: int, always: Sequence[int]
    ) -> torch.Tensor:
        """(N, V) bool: per utterance, the tokens its language used at least `min_count` times,
        plus the `always` ids (EOS); every token for a None language (predicted, not given).

        Raises:
            KeyError: a language with no row.
        """
        rows = []
        for lang in languages:
            if lang is None:
                rows.append(torch.ones(self.counts.shape[1], dtype=torch.bool))
                continue
            if lang not in self.languages:
                raise KeyError(f"no token counts for language '{lang}'")
            rows.append(self.counts[self.languages.index(lang)] >= min_count)
        allowed = torch.stack(rows)
        allowed[:, list(always)] = True
        return allowed


def restrict_log_probs(log_probs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """CTC log-probabilities renormalized over each utterance's allowed tokens.

    Args:
        log_probs: (N, S, V + 1), the blank last; allowed: (N, V) bool (the blank stays).
    Returns:
        (N, S, V + 1) log-probabilities, BLOCKED before renormalizing on blocked tokens.
    """
    keep = F.pad(allowed, (0, log_probs.shape[-1] - allowed.shape[-1]), value=True)
    return F.log_softmax(log_probs.masked_fill(~keep[:, None, :], BLOCKED), dim=-1)


def blocked_bias(allowed: torch.Tensor) -> torch.Tensor:
    """(N, V) bool -> (N, 1, V) float: 0 on allowed tokens, BLOCKED on the others; added to
    the logits of every canvas position."""
    return torch.where(allowed, 0.0, BLOCKED)[:, None, :]


@dataclass(frozen=True)
class LanguageFilter:
    """A logit filter for the sampler: each utterance writes only its allowed tokens.

    allowed: (N, V) bool (`LanguageVocabulary.allowed`).
    """

    allowed: torch.Tensor

    def apply(self, logits: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """logits (P, V) at the positions `where` marks on utterance-major rows (N*K, L) ->
        the same logits, BLOCKED added on each utterance's blocked tokens."""
        return logits + per_utterance_at(blocked_bias(self.allowed), where)
