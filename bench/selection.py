"""Cost of choosing among candidates: the pure-Python string ROVER against `whisfusion.pdd.select`.

    python -m bench.selection            # 16 utterances x K=8 CJK-length candidates, CPU

The baseline is ROVER as first written: candidates split into Python strings, the alignment a
pure-Python dynamic programme, MBR computed twice (once for the backbone, once for the
trajectory's source), and a special-token table rebuilt per batch. The current path aligns
small ints with a vectorized table, measures each MBR pair once in C, and builds the table once
per tokenizer. Both give the same transcripts (checked here, and in tests/test_select.py).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whisfusion.pdd.select import backtrace, mbr_index, ranking_of, rover_units  # noqa: E402
from whisfusion.scoring.normalizers import join_units, split_units  # noqa: E402

# A CJK utterance of about 15 s: some 100 characters; 16 of them a decoding batch.
UTTERANCES, CANDIDATES, CHARS = 16, 8, 100
# Share of characters each candidate gets wrong (substituted, dropped or doubled).
ERROR_RATE = 0.1
# A 32k SentencePiece vocabulary: the table the baseline rebuilt per batch.
VOCAB = 32000


def python_align(slots: list[list[str | None]], hyp: list[str]) -> list[tuple[int, int]]:
    """The baseline alignment: `select.align`'s cost table filled cell by cell in Python."""
    m, n = len(slots), len(hyp)
    words = [set(slot) for slot in slots]
    cost = [[i + j if i == 0 or j == 0 else 0 for j in range(n + 1)] for i in range(m + 1)]
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            cost[i][j] = min(
                cost[i - 1][j - 1] + (hyp[j - 1] not in words[i - 1]),
                cost[i - 1][j] + 1,
                cost[i][j - 1] + 1,
            )
    return backtrace(cost, words, hyp)


def python_rover(texts: Sequence[str], ranking: list[int], unit: str) -> tuple[str, int]:
    """The baseline ROVER over strings; the voted text and its backbone (MBR run twice, as the
    baseline's caller did)."""
    backbone = mbr_index(texts, unit)
    order = [backbone] + [k for k in ranking if k != backbone]
    slots: list[list[str | None]] = []
    for added, k in enumerate(order):
        hyp = split_units(texts[k], unit)
        slots = [
            (slots[s] if s >= 0 else [None] * added) + [hyp[w] if w >= 0 else None]
            for s, w in python_align(slots, hyp)
        ]
    rank_of = {k: r for r, k in enumerate(ranking)}
    out = []
    for entries in slots:
        counts = Counter(entries)
        first: dict[str | None, int] = {}
        for k, value in zip(order, entries, strict=True):
            first[value] = min(first.get(value, len(order)), rank_of[k])
        winner = min(counts, key=lambda v: (-counts[v], first[v]))
        if winner is not None:
            out.append(winner)
    return join_units(out, unit), mbr_index(texts, unit)


def cjk_batch(seed: int = 0) -> list[list[str]]:
    """UTTERANCES x CANDIDATES noisy copies of random CJK sentences of CHARS characters."""
    rng = random.Random(seed)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 400)]
    batch = []
    for _ in range(UTTERANCES):
        truth = [rng.choice(chars) for _ in range(CHARS)]
        cands = []
        for _ in range(CANDIDATES):
            out = []
            for c in truth:
                r = rng.random()
                if r < ERROR_RATE / 3:
                    out.append(rng.choice(chars))
                elif r < 2 * ERROR_RATE / 3:
                    continue
                elif r < ERROR_RATE:
                    out += [c, c]
                else:
                    out.append(c)
            cands.append("".join(out))
        batch.append(cands)
    return batch


def _best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run_selection_benchmark(repeats: int = 3) -> dict:
    """Best-of-`repeats` seconds per batch, baseline and current, and their ratio."""
    batch = cjk_batch()
    means = [[1.0 - 0.01 * k for k in range(CANDIDATES)] for _ in batch]

    def baseline():
        table = [i < 100 for i in range(VOCAB + 1)]  # rebuilt per batch, as the baseline did
        del table
        return [python_rover(t, ranking_of(m), "char") for t, m in zip(batch, means, strict=True)]

    def current():
        return [rover_units(t, ranking_of(m), "char") for t, m in zip(batch, means, strict=True)]

    old_s, old = _best_of(baseline, repeats)
    new_s, new = _best_of(current, repeats)
    if old != new:
        raise RuntimeError("the current ROVER chose differently from the baseline")
    return {
        "utterances": UTTERANCES,
        "candidates": CANDIDATES,
        "chars": CHARS,
        "baseline_s": old_s,
        "current_s": new_s,
        "speedup": old_s / new_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.selection", description=__doc__)
    p.add_argument("--repeats", type=int, default=3, help="runs of each; the best is reported")
    result = run_selection_benchmark(p.parse_args(argv).repeats)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
