"""What the measurements say: PDD/AR time ratios, where PDD overtakes AR, a default (T, K).

Pure functions over the measurement rows the runner writes (dicts with `family`, `decoder`,
`batch`, `n_tokens`, `steps`, `candidates`, `median_s`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Crossing:
    """Where PDD and AR change places along the measured transcript lengths."""

    # "always": PDD faster at every N; "never": at none; "from": PDD faster from `n` on;
    # "until": PDD faster up to `n`, slower beyond; "between": faster only at some middle N.
    kind: str
    # Estimated crossing length (log-log interpolation between `below` and `above`).
    n: float | None
    # The measured lengths either side of the crossing.
    below: int | None
    above: int | None
    # Lengths at which PDD is faster.
    faster_at: tuple[int, ...]

    def text(self) -> str:
        if self.kind == "always":
            return "faster at every N"
        if self.kind == "never":
            return "slower at every N"
        if self.kind == "between":
            return "faster only at N = " + ", ".join(map(str, self.faster_at))
        word = "faster from" if self.kind == "from" else "faster up to"
        return f"{word} ~{self.n:.0f} ({self.below}-{self.above})"


def _interpolate(n0: int, r0: float, n1: int, r1: float) -> float:
    """N where the ratio crosses 1, log ratio taken linear in log N between two lengths."""
    share = math.log(r0) / (math.log(r0) - math.log(r1))
    return math.exp(math.log(n0) + share * (math.log(n1) - math.log(n0)))


def crossing(lengths: Sequence[int], ratios: Sequence[float]) -> Crossing:
    """Where the PDD/AR time ratio passes 1.

    Args:
        lengths: increasing transcript lengths N.
        ratios: PDD time / AR time at each length.
    """
    if not lengths or len(lengths) != len(ratios) or list(lengths) != sorted(set(lengths)):
        raise ValueError(f"need increasing lengths with one ratio each, got {lengths} / {ratios}")
    faster = [r < 1.0 for r in ratios]
    faster_at = tuple(n for n, f in zip(lengths, faster, strict=True) if f)
    if all(faster) or not any(faster):
        return Crossing("always" if all(faster) else "never", None, None, None, faster_at)
    if faster[-1]:  # overtakes: the last length at which AR is still as fast, and the next
        i = max(j for j, f in enumerate(faster) if not f)
        kind = "from"
    elif faster[0]:  # falls behind: the last length of the first run of PDD wins, and the next
        i = faster.index(False) - 1
        kind = "until"
    else:
        return Crossing("between", None, None, None, faster_at)
    n = _interpolate(lengths[i], ratios[i], lengths[i + 1], ratios[i + 1])
    return Crossing(kind, n, lengths[i], lengths[i + 1], faster_at)


def _medians(
    rows: Sequence[dict], family: str, keys: tuple[str, ...]
) -> dict[tuple, dict[int, float]]:
    """{(values of keys): {N: median seconds}} for one family of measurements, in run order."""
    out: dict[tuple, dict[int, float]] = {}
    for row in rows:
        if row["family"] == family:
            out.setdefault(tuple(row[k] for k in keys), {})[row["n_tokens"]] = row["median_s"]
    return out


def comparisons(rows: Sequence[dict]) -> list[dict]:
    """One entry per (diffusion decoder, AR decoder, batch, T, K): ratios at each N, crossing."""
    ar = _medians(rows, "ar", ("decoder", "batch"))
    pdd = _medians(rows, "pdd", ("decoder", "batch", "steps", "candidates"))
    ar_names = list(dict.fromkeys(name for name, _ in ar))
    out = []
    for (size, batch, steps, candidates), times in pdd.items():
        for name in ar_names:
            ar_times = ar.get((name, batch), {})
            lengths = sorted(set(times) & set(ar_times))
            if not lengths:
                continue
            ratios = [times[n] / ar_times[n] for n in lengths]
            cross = crossing(lengths, ratios)
            out.append(
                {
                    "pdd": size,
                    "ar": name,
                    "batch": batch,
                    "steps": steps,
                    "candidates": candidates,
                    "lengths": lengths,
                    "ratios": ratios,
                    "crossing": {**asdict(cross), "text": cross.text()},
                }
            )
    return out


def recommend(
    comps: Sequence[dict], size: str, tuned_steps: int, against: Sequence[str]
) -> dict | None:
    """The default (T, K) for diffusion decoder `size`, judged against the AR decoders `against`.

    T: the smallest measured T >= `tuned_steps` (the step count the method is tuned for; fewer
    steps are faster but commit more tokens per step, untested for accuracy), else the largest
    measured. K: the most candidates that keep PDD faster than each of `against` at every
    measured length and batch size (more candidates give the selection more to choose from);
    K = 1 with `beats_ar` False when even one candidate does not. The speedups listed cover
    every AR decoder measured.
    """
    every_ar = [c for c in comps if c["pdd"] == size]
    rows = [c for c in every_ar if c["ar"] in against]
    if not rows:
        return None
    batches = {c["batch"] for c in rows}
    measured = sorted({c["steps"] for c in rows})
    # prefer a T measured at every batch size, so K can be judged at all of them
    common = [
        t
        for t in measured
        if all(any(c["steps"] == t and c["batch"] == b for c in rows) for b in batches)
    ] or measured
    steps = min((t for t in common if t >= tuned_steps), default=max(common))
    ks = sorted({c["candidates"] for c in rows if c["steps"] == steps}, reverse=True)
    beats = {
        k: all(
            r < 1.0
            for c in rows
            if c["steps"] == steps and c["candidates"] == k
            for r in c["ratios"]
        )
        for k in ks
    }
    k = next((k for k in ks if beats[k]), ks[-1])
    chosen = [c for c in every_ar if c["steps"] == steps and c["candidates"] == k]
    rec = _recommendation(size, steps, tuned_steps, k, chosen, beats_ar=beats[k])
    return {**rec, "judged_against": list(against)}


def _recommendation(
    size: str, steps: int, tuned_steps: int, candidates: int, chosen: list[dict], beats_ar: bool
) -> dict:
    return {
        "pdd": size,
        "steps": steps,
        "tuned_steps": tuned_steps,
        "candidates": candidates,
        "beats_ar": beats_ar,
        # AR time / PDD time per (AR decoder, batch) and length
        "speedup": [
            {
                "ar": c["ar"],
                "batch": c["batch"],
                "by_length": {
                    str(n): 1.0 / r for n, r in zip(c["lengths"], c["ratios"], strict=True)
                },
            }
            for c in chosen
        ],
    }
