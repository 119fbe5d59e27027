"""Counters of the samples a data stream read, kept and skipped (by reason).

DataLoader workers are separate processes and share no memory, so each worker keeps its own
`DataStats` and ships the counts accumulated since its previous batch inside the batch
(`batch["stats"]`, a plain `{name: count}` dict). The main process adds them up
(`WhisfusionDataModule.stats()` -> `StatsReport`); under DDP each rank holds its own totals,
to be summed across ranks by whoever logs them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Reasons a sample (or a whole shard) is skipped; the keys of the counters.
UNDECODABLE_AUDIO = "undecodable_audio"
EMPTY_AUDIO = "empty_audio"
EMPTY_TEXT = "empty_text"
UNKNOWN_LANGUAGE = "unknown_language"
BAD_SAMPLE_RATE = "bad_sample_rate"
BAD_CHANNELS = "bad_channels"
NAN_AUDIO = "nan_audio"
TOO_LONG = "too_long"
CANVAS_OVERFLOW = "canvas_overflow"
MISSING_FIELD = "missing_field"
BAD_JSON = "bad_json"
SHARD_ERROR = "shard_error"
MISSING_SAMPLE = "missing_sample"
REASONS = (
    UNDECODABLE_AUDIO,
    EMPTY_AUDIO,
    EMPTY_TEXT,
    UNKNOWN_LANGUAGE,
    BAD_SAMPLE_RATE,
    BAD_CHANNELS,
    NAN_AUDIO,
    TOO_LONG,
    CANVAS_OVERFLOW,
    MISSING_FIELD,
    BAD_JSON,
    SHARD_ERROR,
    MISSING_SAMPLE,
)
# Samples read from shards, samples delivered in batches, and training samples augmented.
READ = "read"
KEPT = "kept"
AUGMENTED = "augmented"
COUNTS = (READ, KEPT, AUGMENTED)

# Every occurrence of a reason up to this count is logged; after it only powers of two, so a
# corpus with millions of bad samples still says how many without flooding the log.
WARN_FIRST = 10


def _should_warn(count: int) -> bool:
    return count <= WARN_FIRST or (count & (count - 1)) == 0


class BadSample(Exception):
    """A sample that cannot be used; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DataStats:
    """Per-reason skip counts plus read/kept counts, with a delta since the last `take()`."""

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self._since: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        self.total[name] += n
        self._since[name] += n

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        """Count one skipped sample (or shard) and log it, rate-limited per reason."""
        self.add(reason)
        count = self.total[reason]
        if _should_warn(count):
            log.warning(
                "skipped (%s, #%d): %s%s", reason, count, where, f": {detail}" if detail else ""
            )

    def take(self) -> dict[str, int]:
        """Counts since the previous call (shipped inside each batch)."""
        out = dict(self._since)
        self._since.clear()
        return out

    def merge(self, counts: Mapping[str, int]) -> None:
        """Add counts shipped by a worker."""
        for name, n in counts.items():
            self.total[name] += int(n)

    def as_dict(self) -> dict[str, int]:
        return dict(self.total)


@dataclass
class StatsReport:
    """Totals of one rank, as `WhisfusionDataModule.stats()` returns them."""

    train: dict[str, int]
    val: dict[str, int]

    def flat(self) -> dict[str, int]:
        """`{"train/read": .., "train/skipped/<reason>": .., "val/...": ..}` for loggers."""
        out = {}
        for split, counts in (("train", self.train), ("val", self.val)):
            for name, n in sorted(counts.items()):
                out[f"{split}/{name}" if name in COUNTS else f"{split}/skipped/{name}"] = n
        return out

    def summary(self) -> str:
        """One line per split: read, kept, skipped by reason, and any read but never batched."""
        lines = []
        for split, counts in (("train", self.train), ("val", self.val)):
            skipped = {k: v for k, v in counts.items() if k not in COUNTS}
            why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"
            augmented = f" ({counts[AUGMENTED]} augmented)" if counts.get(AUGMENTED) else ""
            line = (
                f"{split}: read {counts.get(READ, 0)}, kept {counts.get(KEPT, 0)}{augmented}, "
                f"skipped {sum(skipped.values())} ({why})"
            )
            # samples are counted as read when they leave a shard and as kept when their batch
            # leaves the duration buckets; between the two is the shuffle buffer
            waiting = counts.get(READ, 0) - counts.get(KEPT, 0) - sum(skipped.values())
            if waiting > 0:
                line += (
                    f", {waiting} read but still in the shuffle buffer or the duration buckets "
                    "when the run ended"
                )
            lines.append(line)
        return "\n".join(lines)
