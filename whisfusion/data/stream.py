"""Streaming datasets: an endless mixed training stream and a finite validation set.

Training (`TrainStream`), inside each DataLoader worker of each rank:
    one resampled shard stream per language (any shard of the language, drawn at random with
    replacement, so there are no epochs and the run ends at max_steps)
    -> weighted language mixer -> shuffle buffer (of encoded samples: compressed audio is small)
    -> decode and check -> augmentation (`augment.py`; off by default) -> duration buckets
    -> batches.
Every (rank, worker) stream draws from all shards of each language and keeps every sample it
reads: no byte is read only to be thrown away, however many streams a job runs. Streams differ
by their seed, made from (seed, rank, worker, resume count), so a resumed run draws fresh
samples instead of replaying the first ones. A language with fewer shards than streams is still
read once per sample trained on, but streams then often read the same shard at the same time
(`WhisfusionDataModule` warns; data_prep's `--streams` sizes shards to avoid it).

Validation (`ValidStream`): the index's validation samples in order are cut into one contiguous
block per rank (by sample, not by shard, so ranks stay balanced), every rank gets the same
number of batches, and each rank's batches are split among its workers. A batch left empty
(a short rank, or only bad samples) repeats an utterance flagged `dup=True`.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from whisfusion.data import stats as S
from whisfusion.data.augment import Augmenter
from whisfusion.data.samples import Example, ExampleDecoder, collate
from whisfusion.data.shards import iter_shard
from whisfusion.seeding import mixed_seed

# A language stream whose last this-many shard draws (at least 4 per shard) all failed has no
# readable shard left: stop with an error instead of spinning forever.
MIN_FAILED_DRAWS = 16
# This many bad samples in a row means the data is broken, not noisy.
MAX_BAD_IN_ROW = 10_000

# Last key of the seed of a stream's augmentation draws, apart from its sample draws, so that
# switching augmentation on or off leaves the samples drawn unchanged.
AUGMENT_STREAM = 1 << 32

# A validation sample: (shard path, ordinal of the sample inside the shard).
Position = tuple[str, int]


def language_weights(
    hours: dict[str, float], temperature: float, override: dict[str, float]
) -> dict[str, float]:
    """Sampling probability per language.

    Temperature sampling: p_l proportional to hours_l ** temperature (1 = proportional to the
    data, 0 = uniform). Non-empty `override` gives the weights directly (normalized); languages
    it does not name are not drawn.
    """
    if override:
        unknown = sorted(set(override) - set(hours))
        if unknown:
            raise ValueError(
                f"language_weights names {unknown}, which have no training shards "
                f"(have: {sorted(hours)})"
            )
        raw = {lang: float(override.get(lang, 0.0)) for lang in hours}
    else:
        raw = {lang: (h**temperature if h > 0 else 0.0) for lang, h in hours.items()}
    if any(w < 0 for w in raw.values()) or sum(raw.values()) <= 0:
        raise ValueError(f"language weights must be >= 0 with a positive sum, got {raw}")
    total = sum(raw.values())
    return {lang: w / total for lang, w in raw.items()}


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _shard_error(stats: S.DataStats):
    return lambda path, err: stats.skip(S.SHARD_ERROR, path, str(err))


def _resampled(lang: str, paths: Sequence[str], rng: random.Random, stats: S.DataStats):
    """Endless raw samples of one language: random shards drawn with replacement, every sample
    of each shard kept (and counted as read)."""
    empty_in_row = 0
    limit = max(MIN_FAILED_DRAWS, 4 * len(paths))
    while True:
        got = False
        for raw in iter_shard(rng.choice(paths), _shard_error(stats)):
            got = True
            stats.add(S.READ)
            yield raw
        empty_in_row = 0 if got else empty_in_row + 1
        if empty_in_row >= limit:
            raise RuntimeError(
                f"no readable shard for language '{lang}' in {empty_in_row} draws from "
                f"{len(paths)} shard(s), e.g. {paths[0]}"
            )


def _mix(streams: dict[str, Iterator], weights: dict[str, float], rng: random.Random):
    """Samples of the languages in proportion to `weights`. Not webdataset's RandomMix: that
    draws from the process-wide `random`, so a stream could not be replayed from its seed."""
    langs = list(streams)
    probs = [weights[lang] for lang in langs]
    while True:
        yield next(streams[rng.choices(langs, probs)[0]])


def _decode(raws, decoder: ExampleDecoder, stats: S.DataStats) -> Iterator[Example]:
    bad_in_row = 0
    for raw in raws:
        try:
            yield decoder(raw)
            bad_in_row = 0
        except S.BadSample as bad:
            stats.skip(bad.reason, f"{raw.get('__url__')} key {raw.get('__key__')}", bad.detail)
            bad_in_row += 1
            if bad_in_row >= MAX_BAD_IN_ROW:
                raise RuntimeError(
                    f"{bad_in_row} bad samples in a row, last: {bad}; counts: {stats.as_dict()}"
                ) from None


def _augment(
    examples, augmenter: Augmenter, rng: random.Random, stats: S.DataStats
) -> Iterator[Example]:
    for ex in examples:
        ex = augmenter(ex, rng)
        if ex.augmented:
            stats.add(S.AUGMENTED)
        yield ex


def bucket_batches(
    examples, edges: Sequence[float], batch_size: int, max_seconds: float
) -> Iterator[list[Example]]:
    """Group examples of similar duration.

    Each example goes to the first bucket whose upper edge (seconds) holds it (longer ones to
    the last bucket). A bucket is emitted when it has `batch_size` examples, or when one more
    would make its padded size (count x longest) exceed `max_seconds` (0 = no limit).
    """
    buckets: list[list[Example]] = [[] for _ in edges]
    for ex in examples:
        bucket = buckets[min(bisect.bisect_left(edges, ex.duration), len(edges) - 1)]
        if bucket and max_seconds > 0:
            longest = max(ex.duration, max(e.duration for e in bucket))
            if (len(bucket) + 1) * longest > max_seconds:
                yield bucket[:]
                bucket.clear()
        bucket.append(ex)
        if len(bucket) >= batch_size:
            yield bucket[:]
            bucket.clear()


class TrainStream(IterableDataset):
    """Endless batches (see the module docstring); use with `DataLoader(batch_size=None)`."""

    def __init__(
        self,
        shards: dict[str, list[str]],
        weights: dict[str, float],
        decoder: ExampleDecoder,
        *,
        batch_size: int,
        max_batch_seconds: float,
        bucket_edges: Sequence[float],
        shuffle_buffer: int,
        seed: int,
        rank: int,
        resume_count: int,
        augmenter: Augmenter | None = None,
    ):
        self.shards = {lang: list(p) for lang, p in shards.items() if weights.get(lang, 0) > 0}
        self.weights = weights
        self.decoder = decoder
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self.bucket_edges = list(bucket_edges)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.resume_count = resume_count
        self.augmenter = augmenter

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, _ = _worker()
        keys = (self.seed, self.rank, worker, self.resume_count)
        rng = random.Random(mixed_seed(*keys))
        stats = S.DataStats()
        streams = {
            lang: _resampled(lang, paths, random.Random(rng.getrandbits(64)), stats)
            for lang, paths in sorted(self.shards.items())
        }
        size = self.shuffle_buffer
        raws = wds.filters.shuffle(size, size, rng=rng)(_mix(streams, self.weights, rng))
        examples = _decode(raws, self.decoder, stats)
        if self.augmenter is not None and self.augmenter.active:
            aug_rng = random.Random(mixed_seed(*keys, AUGMENT_STREAM))
            examples = _augment(examples, self.augmenter, aug_rng, stats)
        batches = bucket_batches(
            examples,
            self.bucket_edges,
            self.batch_size,
            self.max_batch_seconds,
        )
        eos = self.decoder.tokenizer.eos_id
        for batch in batches:
            stats.add(S.KEPT, len(batch))
            yield collate(batch, eos, stats.take())


def validation_positions(
    shards: Sequence[tuple[str, int, str]], max_per_language: int | None
) -> list[Position]:
    """Every validation sample in index order.

    Args:
        shards: (path, samples, language) in index order.
        max_per_language: keep the first this-many samples of each language (None = all).
    """
    positions: list[Position] = []
    taken: dict[str, int] = {}
    for path, samples, lang in shards:
        room = samples if max_per_language is None else max_per_language - taken.get(lang, 0)
        keep = max(0, min(samples, room))
        positions += [(path, i) for i in range(keep)]
        taken[lang] = taken.get(lang, 0) + keep
    return positions


def plan_validation(
    positions: Sequence[Position], rank: int, world_size: int, batch_size: int
) -> list[list[Position]]:
    """This rank's validation batches: a contiguous block of `positions` in near-equal batches.

    Every rank gets the same number of batches. A batch is empty only when a rank has fewer
    samples than batches; the stream then fills it with a repeated utterance.
    """
    blocks = np.array_split(np.arange(len(positions)), world_size)
    n_batches = math.ceil(max(len(b) for b in blocks) / batch_size)
    if n_batches == 0:
        return []
    return [[positions[i] for i in part] for part in np.array_split(blocks[rank], n_batches)]


class ValidStream(IterableDataset):
    """This rank's validation batches; each DataLoader worker takes a contiguous share."""

    def __init__(self, batches: list[list[Position]], decoder: ExampleDecoder, all_positions):
        self.batches = batches
        self.decoder = decoder
        # Every validation position of every rank, in order: where a filler is looked for when
        # this worker has no good sample of its own to repeat.
        self.all_positions = all_positions

    def _resolve(self, positions: Sequence[Position], stats: S.DataStats):
        """(position, Example or None) for each position, in order, reading shards once."""
        i = 0
        while i < len(positions):
            path = positions[i][0]
            wanted = []
            while i < len(positions) and positions[i][0] == path:
                wanted.append(positions[i])
                i += 1
            j = 0
            for ordinal, raw in enumerate(iter_shard(path, _shard_error(stats))):
                if ordinal != wanted[j][1]:
                    continue
                stats.add(S.READ)
                try:
                    yield wanted[j], self.decoder(raw)
                except S.BadSample as bad:
                    stats.skip(bad.reason, f"{path} key {raw.get('__key__')}", bad.detail)
                    yield wanted[j], None
                j += 1
                if j == len(wanted):
                    break
            for pos in wanted[j:]:
                stats.skip(S.MISSING_SAMPLE, f"{path} sample #{pos[1]}", "not in the shard")
                yield pos, None

    def _first_good(self) -> Example:
        quiet = S.DataStats()  # these samples are counted where they are scored
        for _, ex in self._resolve(self.all_positions, quiet):
            if ex is not None:
                return ex
        raise RuntimeError("no readable validation sample in any validation shard")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, n_workers = _worker()
        share = np.array_split(np.arange(len(self.batches)), n_workers)[worker]
        mine = [self.batches[k] for k in share]
        stats = S.DataStats()
        results = self._resolve([pos for batch in mine for pos in batch], stats)
        eos = self.decoder.tokenizer.eos_id
        last_good: Example | None = None
        for planned in mine:
            got = [ex for _, ex in (next(results) for _ in planned) if ex is not None]
            stats.add(S.KEPT, len(got))
            if got:
                last_good = got[-1]
            else:
                last_good = last_good or self._first_good()
                got = [last_good.as_dup()]
            yield collate(got, eos, stats.take())
