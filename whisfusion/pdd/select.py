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

import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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


def ranking_of(means: Sequence[float]) -> list[int]:
    """Candidate indices by descending mean confidence, ties in index order."""
    return sorted(range(len(means)), key=lambda k: -means[k])


def confidence_ranking(confidences: Confidences) -> list[int]:
    """Candidate indices by descending mean confidence, ties in index order."""
    return ranking_of([mean_confidence(c) for c in confidences])


def unit_ids(texts: Sequence[str], unit: str) -> tuple[list[list[int]], list[str]]:
    """Each text as a list of small ints, one per `unit` (equal units, equal ints), and the
    unit of each int: the alignments below compare ints, which the C edit distance and the
    vectorized table are fast on."""
    table: dict[str, int] = {}
    seqs = [[table.setdefault(u, len(table)) for u in split_units(t, unit)] for t in texts]
    return seqs, list(table)


def mbr_of(seqs: Sequence[Sequence[int]]) -> int:
    """The sequence with the least summed edit distance to all others; ties to the lowest index.

    Edit distance is symmetric: each pair is measured once (C Levenshtein on int sequences).
    """
    risks = [0] * len(seqs)
    for a in range(len(seqs)):
        for b in range(a + 1, len(seqs)):
            d = Levenshtein.distance(seqs[a], seqs[b])
            risks[a] += d
            risks[b] += d
    return risks.index(min(risks))


def mbr_index(texts: Sequence[str], unit: str) -> int:
    """The candidate with the least summed edit distance (in `unit`s) to all others."""
    return mbr_of(unit_ids(texts, unit)[0])


# Id of "no unit" in a confusion-network slot; unit ids are >= 0.
_EMPTY = -1


def align_costs(slots: np.ndarray, hyp: Sequence[int]) -> np.ndarray:
    """Edit-distance table of `hyp` against the slots of a confusion network.

    Matching a unit to a slot costs 0 if any candidate already has that unit there, else 1;
    leaving a slot empty or opening a new slot costs 1.

    Args:
        slots: (m, c) int, the unit of each of the c candidates aligned so far in each slot
            (_EMPTY where a candidate has none).
        hyp: n unit ids.
    Returns:
        (m + 1, n + 1) int64 cost table: [i, j] = cost of aligning slots[:i] with hyp[:j].

    Each row is vectorized: with a[j] = min(diagonal, above) the recurrence
    cost[i, j] = min(a[j], cost[i, j - 1] + 1) is a running minimum of a[j] - j, plus j.
    """
    m, n = slots.shape[0], len(hyp)
    hyp_arr = np.asarray(hyp, dtype=np.int64)
    sub = (slots[:, :, None] != hyp_arr[None, None, :]).all(axis=1).astype(np.int64)
    ramp = np.arange(n + 1, dtype=np.int64)
    cost = np.empty((m + 1, n + 1), dtype=np.int64)
    cost[0] = ramp
    for i in range(1, m + 1):
        prev = cost[i - 1]
        best = np.empty(n + 1, dtype=np.int64)
        best[0] = i
        np.minimum(prev[:-1] + sub[i - 1], prev[1:] + 1, out=best[1:])
        cost[i] = np.minimum.accumulate(best - ramp) + ramp
    return cost


def align(slots: np.ndarray, hyp: Sequence[int]) -> list[tuple[int, int]]:
    """Edit-distance alignment of `hyp` to the slots (`align_costs`): (slot, unit) index pairs,
    -1 for "none" on either side, in order."""
    return backtrace(align_costs(slots, hyp).tolist(), [set(row) for row in slots.tolist()], hyp)


def backtrace(cost: list[list[int]], sets: list[set], hyp: Sequence) -> list[tuple[int, int]]:
    """The alignment path through a full cost table (`align_costs`); `sets` holds each slot's
    units. Ties prefer a match / substitution, then an empty slot, then a new slot."""
    pairs = []
    i, j = len(sets), len(hyp)
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (hyp[j - 1] not in sets[i - 1]):
            i, j = i - 1, j - 1
            pairs.append((i, j))
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
            pairs.append((i, -1))
        else:
            j -= 1
            pairs.append((-1, j))
    return pairs[::-1]


def rover_ids(seqs: Sequence[Sequence[int]], ranking: Sequence[int], backbone: int) -> list[int]:
    """ROVER voting over unit-id sequences (module docstring): the voted sequence.

    Args:
        ranking: candidate indices by descending mean confidence (breaks ties).
        backbone: the candidate the others are aligned onto (the MBR pick).
    """
    order = [backbone] + [k for k in ranking if k != backbone]
    slots = np.zeros((0, 0), dtype=np.int64)
    for added, k in enumerate(order):
        hyp = seqs[k]
        pairs = align(slots, hyp)
        merged = np.full((len(pairs), added + 1), _EMPTY, dtype=np.int64)
        for row, (slot, unit) in enumerate(pairs):
            if slot >= 0:
                merged[row, :added] = slots[slot]
            if unit >= 0:
                merged[row, added] = hyp[unit]
        slots = merged
    rank_of = [0] * len(order)
    for r, k in enumerate(ranking):
        rank_of[k] = r
    order_rank = [rank_of[k] for k in order]
    out = []
    for entries in slots.tolist():
        counts = Counter(entries)
        # best vote first, then the value whose best-ranked supporter ranks highest
        first: dict[int, int] = {}
        for r, value in zip(order_rank, entries, strict=True):
            first[value] = min(first.get(value, len(order)), r)
        winner = min(counts, key=lambda v: (-counts[v], first[v]))
        if winner != _EMPTY:
            out.append(winner)
    return out


def rover_units(texts: Sequence[str], ranking: Sequence[int], unit: str) -> tuple[str, int]:
    """ROVER over texts: the voted text and its backbone (the MBR pick)."""
    seqs, names = unit_ids(texts, unit)
    backbone = mbr_of(seqs)
    voted = rover_ids(seqs, ranking, backbone)
    return join_units([names[i] for i in voted], unit), backbone


def rover(texts: Sequence[str], confidences: Confidences, unit: str) -> str:
    """ROVER voting over the candidates (module docstring)."""
    return rover_units(texts, confidence_ranking(confidences), unit)[0]


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
    pieces = [MASK_SHOWN if i == tokenizer.mask_id else tokenizer.piece(i) for i in ids]
    return "".join(pieces).replace("\u2581", " ").strip()


def _language_vote(langs: list[str | None], ranking: list[int]) -> str | None:
    """Most frequent predicted language; ties to the best-ranked candidate."""
    counts = Counter(langs)
    return max((langs[k] for k in ranking), key=lambda lang: counts[lang])


def special_table(tokenizer: Tokenizer) -> torch.Tensor:
    """(mask_id + 1,) bool, True on special ids (EOS, languages, [MASK], ...); built once per
    tokenizer (a 32k-entry Python loop would otherwise run on every decoding batch)."""
    table = _SPECIAL_TABLES.get(tokenizer)
    if table is None:
        table = torch.tensor([tokenizer.is_special(i) for i in range(tokenizer.mask_id + 1)])
        _SPECIAL_TABLES[tokenizer] = table
    return table


_SPECIAL_TABLES: weakref.WeakKeyDictionary[Tokenizer, torch.Tensor] = weakref.WeakKeyDictionary()


def candidate_means(
    tokens: torch.Tensor,
    conf: torch.Tensor,
    valid: torch.Tensor,
    special: torch.Tensor,
    eos_id: int,
) -> torch.Tensor:
    """Mean confidence of each candidate's text tokens; of its EOS positions when it has none.

    Args:
        tokens, conf: (N, K, L); valid: (N, L) bool; special: `special_table`.
    Returns:
        (N, K) float64, 0 where a candidate has neither.
    """
    valid = valid[:, None, :]
    text = ~special[tokens] & valid
    eos = (tokens == eos_id) & valid
    scored = torch.where(text.any(dim=-1, keepdim=True), text, eos)
    total = (conf.double() * scored).sum(dim=-1)
    return total / scored.sum(dim=-1).clamp(min=1)


def detokenize(
    tokens: torch.Tensor, valid: torch.Tensor, special: torch.Tensor, tokenizer: Tokenizer
) -> list[list[str]]:
    """Text of every candidate, specials dropped, in one tokenizer call.

    tokens: (N, K, L); valid: (N, L) bool. Returns N lists of K stripped texts.
    """
    n, k, _ = tokens.shape
    keep = ~special[tokens] & valid[:, None, :]
    rows = [
        row[mask].tolist()
        for row, mask in zip(tokens.flatten(0, 1), keep.flatten(0, 1), strict=True)
    ]
    texts = [t.strip() for t in tokenizer.decode_batch(rows)]
    return [texts[u * k : (u + 1) * k] for u in range(n)]


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
    special = special_table(tokenizer)
    all_texts = detokenize(tokens, valid, special, tokenizer)
    all_means = candidate_means(tokens, conf, valid, special, tokenizer.eos_id).tolist()
    first_ids = tokens[:, :, 0].tolist()
    out = []
    for u in range(n):
        texts, means = all_texts[u], all_means[u]
        ranking = ranking_of(means)
        langs = [tokenizer.id_to_lang(i) for i in first_ids[u]]
        given = langs_given[u] if langs_given is not None else None
        voted = _language_vote(langs, ranking)
        unit = unit_for(given or voted)
        if method == "rover":
            text, source = rover_units(texts, ranking, unit)
            language = given or voted
        else:
            source = ranking[0] if method == "confidence" else mbr_index(texts, unit)
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
