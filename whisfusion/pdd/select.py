"""Choosing one transcript among the K candidates of an utterance.

Methods:
    confidence  the candidate with the highest mean token probability (v1).
    mbr         minimum Bayes risk: the candidate with the least total edit distance to the
                others (in words, or characters for Chinese / Japanese / Korean).
    rover       word-level voting: the candidates are aligned slot by slot onto the MBR pick and
                each slot takes its majority word (the empty word included). Returns a new
                string, which may equal none of the candidates.
Ties go to the lowest candidate index (confidence, mbr) or to the candidate ranked first by
mean confidence (rover).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rapidfuzz.distance import Levenshtein

from whisfusion.pdd.sampler import PDDResult
from whisfusion.scoring.normalizers import join_units, split_units, unit_for
from whisfusion.tokenizer import Tokenizer

METHODS = ("confidence", "mbr", "rover")

Confidences = Sequence[Sequence[float] | torch.Tensor]

# How a [MASK] shows in a rendered trajectory.
MASK_SHOWN = "\u2592"


def mean_confidence(conf: Sequence[float] | torch.Tensor) -> float:
    """Mean of one candidate's token probabilities; 0 for no tokens."""
    values = torch.as_tensor(conf, dtype=torch.float64).flatten()
    return float(values.mean()) if values.numel() else 0.0


def confidence_ranking(confidences: Confidences) -> list[int]:
    """Candidate indices by descending mean confidence, ties in index order."""
    means = [mean_confidence(c) for c in confidences]
    return sorted(range(len(means)), key=lambda k: -means[k])


def mbr_index(texts: Sequence[str], unit: str) -> int:
    """The candidate with the least summed edit distance (in `unit`s) to all others."""
    seqs = [split_units(t, unit) for t in texts]
    risks = [sum(Levenshtein.distance(a, b) for b in seqs) for a in seqs]
    return risks.index(min(risks))


def _align(slots: list[list[str | None]], hyp: list[str]) -> list[tuple[int, int]]:
    """Edit-distance alignment of `hyp` to the slots of a confusion network.

    Matching a word to a slot costs 0 if any candidate already has that word there, else 1;
    leaving a slot empty or opening a new slot costs 1. Returns (slot, word) index pairs, -1
    for "none" on either side, in order.
    """
    m, n = len(slots), len(hyp)
    words = [set(slot) for slot in slots]
    cost = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        cost[i][0] = i
    for j in range(1, n + 1):
        cost[0][j] = j
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            cost[i][j] = min(
                cost[i - 1][j - 1] + (hyp[j - 1] not in words[i - 1]),
                cost[i - 1][j] + 1,
                cost[i][j - 1] + 1,
            )
    pairs = []
    i, j = m, n
    while i or j:
        # prefer a match / substitution, then an empty slot, then a new slot
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (hyp[j - 1] not in words[i - 1]):
            i, j = i - 1, j - 1
            pairs.append((i, j))
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
            pairs.append((i, -1))
        else:
            j -= 1
            pairs.append((-1, j))
    return pairs[::-1]


def rover(texts: Sequence[str], confidences: Confidences, unit: str) -> str:
    """ROVER voting over the candidates (module docstring)."""
    ranking = confidence_ranking(confidences)
    backbone = mbr_index(texts, unit)
    order = [backbone] + [k for k in ranking if k != backbone]
    slots: list[list[str | None]] = []
    for added, k in enumerate(order):
        hyp = split_units(texts[k], unit)
        merged = []
        for slot, word in _align(slots, hyp):
            entries = slots[slot] if slot >= 0 else [None] * added
            merged.append(entries + [hyp[word] if word >= 0 else None])
        slots = merged
    rank_of = {k: r for r, k in enumerate(ranking)}
    out = []
    for entries in slots:
        counts = Counter(entries)
        # best vote first, then the value whose best-ranked supporter ranks highest
        first = {}
        for k, value in zip(order, entries, strict=True):
            first[value] = min(first.get(value, len(order)), rank_of[k])
        winner = min(counts, key=lambda v: (-counts[v], first[v]))
        if winner is not None:
            out.append(winner)
    return join_units(out, unit)


def _check(texts: Sequence[str], confidences: Confidences) -> None:
    if len(texts) != len(confidences) or not texts:
        raise ValueError(f"{len(texts)} candidates with {len(confidences)} confidence lists")


def best_index(texts: Sequence[str], confidences: Confidences, method: str, unit: str) -> int:
    """Index of the chosen candidate for the index-returning methods (confidence, mbr)."""
    _check(texts, confidences)
    if method == "confidence":
        return confidence_ranking(confidences)[0]
    if method == "mbr":
        return mbr_index(texts, unit)
    raise ValueError(f"'{method}' picks no single candidate; index methods: confidence, mbr")


def select(texts: Sequence[str], confidences: Confidences, method: str, unit: str) -> str:
    """The transcript of one utterance from its K candidates."""
    if method not in METHODS:
        raise ValueError(f"selection method must be one of {', '.join(METHODS)}; got '{method}'")
    if method == "rover":
        _check(texts, confidences)
        return rover(texts, confidences, unit)
    return texts[best_index(texts, confidences, method, unit)]


@dataclass(frozen=True)
class Transcript:
    # The selected transcript.
    text: str
    # Language: the given one, else the predicted token at canvas position 0 (None if that is
    # not a language token).
    language: str | None
    # All K candidate texts, in row order.
    candidates: list[str]
    # The canvas after each step of the candidate the text comes from (rover: its backbone),
    # rendered with [MASK] as MASK_SHOWN; None unless the result kept a trajectory.
    trajectory: list[str] | None = None


def render_canvas(ids: Sequence[int], tokenizer: Tokenizer) -> str:
    """Pieces of a canvas, specials included, with the trailing run of EOS cut to one."""
    ids = [int(i) for i in ids]
    while len(ids) > 1 and ids[-1] == ids[-2] == tokenizer.eos_id:
        ids.pop()
    pieces = [MASK_SHOWN if i == tokenizer.mask_id else tokenizer.sp.id_to_piece(i) for i in ids]
    return "".join(pieces).replace("\u2581", " ").strip()


def _language_vote(langs: list[str | None], ranking: list[int]) -> str | None:
    """Most frequent predicted language; ties to the best-ranked candidate."""
    counts = Counter(langs)
    return max((langs[k] for k in ranking), key=lambda lang: counts[lang])


def decode_result(
    result: PDDResult,
    tokenizer: Tokenizer,
    method: str,
    langs_given: Sequence[str | None] | None = None,
) -> list[Transcript]:
    """Detokenize, select and read the language of every utterance of a `PDDResult`.

    A candidate's confidence is the mean probability of its text tokens (EOS, language and
    other specials excluded); a candidate with no text token (silence) is scored by its EOS
    positions instead, so a confidently empty transcript can win. Text tokens after a stray
    mid-canvas EOS are kept: with a bidirectional decoder a lone EOS is likelier an error
    than the end.

    Args:
        langs_given: per utterance, the language fixed on the canvas, or None where predicted.
    """
    n = result.tokens.shape[0]
    if langs_given is not None and len(langs_given) != n:
        raise ValueError(f"{len(langs_given)} given languages for {n} utterances")
    if method not in METHODS:
        raise ValueError(f"selection method must be one of {', '.join(METHODS)}; got '{method}'")
    tokens, conf, valid = result.tokens.cpu(), result.confidence.cpu(), result.valid.cpu()
    special = torch.tensor([tokenizer.is_special(i) for i in range(tokenizer.mask_id + 1)])
    out = []
    for u in range(n):
        rows, row_conf = tokens[u][:, valid[u]], conf[u][:, valid[u]]
        texts = [tokenizer.decode(r.tolist()).strip() for r in rows]
        confs = []
        for r, c in zip(rows, row_conf, strict=True):
            text_pos = ~special[r]
            confs.append(c[text_pos] if bool(text_pos.any()) else c[r == tokenizer.eos_id])
        langs = [tokenizer.id_to_lang(int(r[0])) for r in rows]
        given = langs_given[u] if langs_given is not None else None
        voted = _language_vote(langs, confidence_ranking(confs))
        unit = unit_for(given or voted)
        if method == "rover":
            text = rover(texts, confs, unit)
            source = mbr_index(texts, unit)
            language = given or voted
        else:
            source = best_index(texts, confs, method, unit)
            text = texts[source]
            language = given or langs[source]
        trajectory = None
        if result.trajectory is not None:
            trajectory = [
                render_canvas(step[u, source].cpu()[valid[u]].tolist(), tokenizer)
                for step in result.trajectory
            ]
        out.append(Transcript(text, language, texts, trajectory))
    return out
