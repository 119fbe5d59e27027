"""The data preparation stages. Each reads the previous stages' outputs under `out` and
returns a report (read / kept / dropped and why) that the driver saves and summarizes.

    <out>/manifests/<split>_raw.jsonl            manifest: every corpus in the common format
                                                (splits: train, valid, test, human, long)
    <out>/tokenizer.model, <out>/stats.json     tokenizer: SentencePiece model, tokens/s, r_max,
    <out>/language_tokens.json                  and how often each language uses each token
    <out>/manifests/<split>/<lang>.jsonl        filter: utterances whose text fits the canvas
    <out>/shards/<split>/<lang>-NNNNNN.tar, <out>/index.json                 shards
    (verify writes nothing: it decodes every sample and fails on any problem)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import random
import shutil
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from data_prep.adapters import ADAPTERS
from data_prep.parallel import parallel_map
from data_prep.settings import PrepSettings
from whisfusion.canvas import build_canvas, canvas_length, r_max_rule
from whisfusion.config import CanvasConfig
from whisfusion.data import stats as S
from whisfusion.data.manifest import ManifestWriter, Utterance, read_manifest
from whisfusion.data.shards import (
    EVAL_ONLY_SPLITS,
    SPLITS,
    build_index,
    read_index,
    verify_shard,
    write_json_atomic,
    write_shard,
)
from whisfusion.language_vocab import FILE_NAME as LANGUAGE_VOCAB_FILE
from whisfusion.language_vocab import LanguageVocabulary
from whisfusion.tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger("data_prep")

# A corpus line that cannot be parsed (data prep only; the stream never sees one).
MALFORMED = "malformed"
# Utterances sent to a worker at once when probing audio.
PROBE_CHUNK = 256
# Bytes per second of 16 kHz 16-bit mono speech in FLAC (about 60% of the raw 32 kB/s); only
# used to turn a target shard size into a sample count.
FLAC_BYTES_PER_SECOND = 20_000
# Smallest training shard (MB) cut to give every stream its own: below this, opening a file
# costs more than reading it on a network file system.
MIN_SHARD_MB = 16.0
# SentencePiece character coverage when the vocabulary has room for it, and its lowest
# accepted value.
MAX_CHARACTER_COVERAGE = 0.9995
MIN_CHARACTER_COVERAGE = 0.98
# Examples of dropped utterances kept per reason in a report.
EXAMPLES = 5


class PrepError(RuntimeError):
    """A stage cannot complete; the message says what to fix."""


class Drops:
    """Dropped-utterance counts per reason, with a few examples each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, example: str, n: int = 1) -> None:
        self.counts[reason] += n
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES:
            kept.append(example)

    def report(self) -> dict[str, Any]:
        return {"dropped": dict(self.counts), "examples": self.examples}


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _count(totals: dict[str, dict[str, float]], lang: str, seconds: float) -> None:
    t = totals.setdefault(lang, {"utterances": 0, "hours": 0.0})
    t["utterances"] += 1
    t["hours"] += seconds / 3600.0


# ---------------------------------------------------------------------------- stage 0: manifest


def check_records(
    records: list[dict[str, Any]], languages: list[str], max_duration: float
) -> list[tuple[Utterance | None, str, str]]:
    """Check corpus records and probe their audio (runs in workers).

    Returns:
        (utterance or None, drop reason or "", where) per record.
    """
    out: list[tuple[Utterance | None, str, str]] = []
    for rec in records:
        where = rec["where"]
        if "error" in rec:
            out.append((None, MALFORMED, f"{where}: {rec['error']}"))
            continue
        if not rec["text"].strip():
            out.append((None, S.EMPTY_TEXT, where))
            continue
        if rec["lang"] not in languages:
            out.append((None, f"{S.UNKNOWN_LANGUAGE}:{rec['lang']}", where))
            continue
        duration = rec.get("duration")
        if duration is None:
            try:
                duration = sf.info(rec["audio"]).duration
            except Exception as err:  # missing file or unreadable header
                out.append((None, S.UNDECODABLE_AUDIO, f"{where}: {rec['audio']}: {err}"))
                continue
        if duration <= 0:
            out.append((None, S.EMPTY_AUDIO, where))
        elif duration > max_duration:
            out.append((None, S.TOO_LONG, f"{where}: {duration:.1f} s"))
        else:
            utt = Utterance(
                id=rec["id"],
                audio=rec["audio"],
                duration=float(duration),
                text=rec["text"],
                lang=rec["lang"],
                speaker=rec.get("speaker"),
            )
            out.append((utt, "", where))
    return out


def stage_manifest(s: PrepSettings, stage_hash: str) -> dict[str, Any]:
    """Every source -> `manifests/{train,valid}_raw.jsonl`; drops empty text, unknown
    languages, unreadable, empty and too long audio, unparsable lines."""
    check = functools.partial(check_records, languages=s.languages, max_duration=s.max_duration)
    drops = Drops()
    kept: dict[str, dict] = {}
    read = 0
    for split in SPLITS:
        totals = kept.setdefault(split, {})
        with ManifestWriter(s.out / "manifests" / f"{split}_raw.jsonl") as sink:
            for src in s.sources:
                for corpus_split in getattr(src, split):
                    records = ADAPTERS[src.kind](src.root, corpus_split)
                    bar = tqdm(desc=f"{src.kind} {corpus_split}", unit="utt", disable=None)
                    for results in parallel_map(check, _chunks(records, PROBE_CHUNK), s.jobs):
                        bar.update(len(results))
                        for utt, reason, where in results:
                            read += 1
                            if utt is None:
                                drops.add(reason, where)
                            else:
                                sink.write(utt)
                                _count(totals, utt.lang, utt.duration)
                    bar.close()
        if not totals and split == "train":
            raise PrepError(f"no training utterance kept from {len(s.sources)} source(s)")
    return {"read": read, "kept": kept, **drops.report()}


# ---------------------------------------------------------------------------- stage 1: tokenizer


def balanced_lines(
    manifest: Path, languages: list[str], per_language: int, seed: int
) -> tuple[list[str], int]:
    """An equal number of transcripts per language: a uniform sample of up to `per_language`
    each (reservoir sampling, one pass); languages with fewer are repeated to the same count.

    Returns:
        (lines, lines per language).
    """
    rng = random.Random(seed)
    reservoirs: dict[str, list[str]] = {}
    seen: Counter[str] = Counter()
    for utt in read_manifest(manifest):
        seen[utt.lang] += 1
        box = reservoirs.setdefault(utt.lang, [])
        if len(box) < per_language:
            box.append(utt.text)
        else:
            j = rng.randrange(seen[utt.lang])
            if j < per_language:
                box[j] = utt.text
    target = max(len(box) for box in reservoirs.values())
    lines: list[str] = []
    for lang in languages:
        box = reservoirs.get(lang, [])
        if box:
            lines += [box[i % len(box)] for i in range(target)]
    rng.shuffle(lines)
    return lines, target


def character_coverage(lines: list[str], vocab_size: int, n_languages: int) -> float:
    """SentencePiece's character coverage, lowered (down to SentencePiece's minimum, 0.98) so
    that the characters it must hold take at most half of the vocabulary left after the
    special and byte pieces.

    Scripts with thousands of characters (hanzi, hangul) would otherwise demand more
    single-character pieces than the vocabulary has; rare characters fall back to bytes.

    Raises:
        PrepError: even the minimum coverage needs more characters than the vocabulary holds.
    """
    ranked = sorted(Counter(c for line in lines for c in line).values(), reverse=True)
    total = max(sum(ranked), 1)
    room = vocab_size - (2 + n_languages + 256)  # <unk>, <|eos|>, language tokens, bytes
    covered = sum(ranked[: max(1, room // 2)]) / total
    coverage = min(MAX_CHARACTER_COVERAGE, max(MIN_CHARACTER_COVERAGE, covered * (1 - 1e-6)))
    needed = int(np.searchsorted(np.cumsum(ranked) / total, coverage)) + 1
    if needed > room:
        raise PrepError(
            f"vocab_size {vocab_size} is too small for this text: covering {coverage:.2%} of its "
            f"characters takes {needed} pieces besides {vocab_size - room} special and byte "
            f"pieces; use a vocab_size of at least {vocab_size - room + 2 * needed}"
        )
    return coverage


def _percentiles(values: np.ndarray) -> dict[str, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "utterances": int(values.size),
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(values.max()), 3),
    }


def stage_tokenizer(s: PrepSettings, stage_hash: str) -> dict[str, Any]:
    """Train the tokenizer on language-balanced text; measure tokens per second; set r_max."""
    train = s.out / "manifests" / "train_raw.jsonl"
    lines, per_lang = balanced_lines(train, s.languages, s.tokenizer_lines, s.seed)
    log.info("training the tokenizer on %d lines (%d per language)", len(lines), per_lang)
    # A char model is as large as its characters need, so there is no vocabulary room to fit:
    # it takes the upper coverage, whose few rarest characters (too rare for their own rows to
    # be trained) fall back to bytes.
    if s.model_type == "char":
        coverage = MAX_CHARACTER_COVERAGE
    else:
        coverage = character_coverage(lines, s.vocab_size, len(s.languages))
    tok = train_tokenizer(
        lines,
        s.languages,
        s.vocab_size,
        s.out / "tokenizer.model",
        character_coverage=coverage,
        model_type=s.model_type,
    )
    rates: dict[str, array] = {}
    counts: dict[str, Counter] = defaultdict(Counter)
    for utt in tqdm(read_manifest(train), desc="tokens/s", unit="utt", disable=None):
        ids = tok.encode(utt.text)
        rates.setdefault(utt.lang, array("f")).append(len(ids) / utt.duration)
        counts[utt.lang].update(ids)
    # which tokens each language uses (decode.language_vocab_min_count)
    vocab = LanguageVocabulary.from_counts(counts, tok.languages, tok.vocab_size)
    write_json_atomic(s.out / LANGUAGE_VOCAB_FILE, vocab.to_dict())
    per_language = {lang: _percentiles(np.asarray(r)) for lang, r in sorted(rates.items())}
    pooled = _percentiles(np.concatenate([np.asarray(r) for r in rates.values()]))
    r_max = r_max_rule(pooled["p99"])
    stats = {
        "r_max": r_max,
        "r_max_rule": "p99 of text tokens per second over all training utterances, "
        "rounded up to 0.5",
        "tokens_per_second": {"all": pooled, **per_language},
        "tokenizer": {
            "model_type": s.model_type,
            "vocab_size": tok.vocab_size,
            "lines_per_language": per_lang,
            "character_coverage": coverage,
        },
        "tokens_used": {lang: len(c) for lang, c in sorted(counts.items())},
    }
    write_json_atomic(s.out / "stats.json", stats)
    return stats


# ---------------------------------------------------------------------------- stage 2: filter


def stage_filter(s: PrepSettings, stage_hash: str) -> dict[str, Any]:
    """Keep training and validation utterances whose text fits the canvas of their duration
    (evaluation-only splits whole); split by language."""
    tok = Tokenizer.from_file(s.out / "tokenizer.model")
    r_max = json.loads((s.out / "stats.json").read_text())["r_max"]
    canvas = CanvasConfig(**{**s.canvas.__dict__, "r_max": r_max})
    drops = Drops()
    kept: dict[str, dict] = {}
    for split in SPLITS:
        out_dir = s.out / "manifests" / split
        shutil.rmtree(out_dir, ignore_errors=True)
        sinks: dict[str, ManifestWriter] = {}
        totals = kept.setdefault(split, {})
        source = s.out / "manifests" / f"{split}_raw.jsonl"
        for utt in tqdm(read_manifest(source), desc=f"canvas fit {split}", disable=None):
            # evaluation-only sets are scored whole: a transcript that does not fit counts as
            # errors, not as a smaller test set
            if split not in EVAL_ONLY_SPLITS:
                try:
                    build_canvas(
                        tok.encode(utt.text),
                        tok.lang_id(utt.lang),
                        tok.eos_id,
                        canvas_length(utt.duration, canvas),
                    )
                except ValueError as err:
                    drops.add(f"{S.CANVAS_OVERFLOW}:{split}:{utt.lang}", f"{utt.id}: {err}")
                    continue
            if utt.lang not in sinks:
                sinks[utt.lang] = ManifestWriter(out_dir / f"{utt.lang}.jsonl")
            sinks[utt.lang].write(utt)
            _count(totals, utt.lang, utt.duration)
        for sink in sinks.values():
            sink.close()
    return {"r_max": r_max, "kept": kept, **drops.report()}


# ---------------------------------------------------------------------------- stage 3: shards


def samples_per_shard(s: PrepSettings, hours: float, utterances: int, split: str) -> int:
    """Samples per shard of one language: `shard_size_mb` worth, and for training small enough
    that the language has `streams` shards (one per training stream), but no smaller than
    `MIN_SHARD_MB` worth."""
    if s.shard_samples > 0:
        return s.shard_samples
    mean_bytes = hours * 3600.0 / max(utterances, 1) * FLAC_BYTES_PER_SECOND
    n = max(1, round(s.shard_size_mb * 1e6 / mean_bytes))
    if split == "train" and s.streams > 0:
        floor = max(1, round(MIN_SHARD_MB * 1e6 / mean_bytes))
        n = min(n, max(floor, math.ceil(utterances / s.streams)))
    return n


def write_shard_job(job: tuple[Path, str, str, str, list[Utterance]]) -> dict[str, Any]:
    """Write one shard unless an identical one is already complete (runs in workers)."""
    path, rel, lang, job_hash, utts = job
    info_path = path.with_name(path.name.removesuffix(".tar") + ".info.json")
    if path.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("job") == job_hash:
            return {**info, "resumed": True}
    info = {**write_shard(path, utts), "path": rel, "language": lang, "job": job_hash}
    write_json_atomic(info_path, info)
    return info


def _shard_jobs(s: PrepSettings, filtered: dict, stage_hash: str):
    for split in SPLITS:
        for lang, totals in sorted(filtered[split].items()):
            n = samples_per_shard(s, totals["hours"], totals["utterances"], split)
            manifest = s.out / "manifests" / split / f"{lang}.jsonl"
            for k, utts in enumerate(_chunks(read_manifest(manifest), n)):
                rel = f"shards/{split}/{lang}-{k:06d}.tar"
                job_hash = hashlib.sha256(f"{stage_hash} {rel} {len(utts)}".encode()).hexdigest()
                yield s.out / rel, rel, lang, job_hash[:16], utts


def stage_shards(s: PrepSettings, stage_hash: str) -> dict[str, Any]:
    """Per split and language: shards of equal sample count (16 kHz FLAC + JSON), index.json."""
    filtered = json.loads((s.out / "reports" / "filter.json").read_text())["kept"]
    expected = sum(t["utterances"] for split in filtered.values() for t in split.values())
    made: dict[str, list[dict]] = {split: [] for split in SPLITS}
    drops = Drops()
    cpu_s, hours_written, resumed = 0.0, 0.0, 0
    start = time.perf_counter()
    bar = tqdm(total=expected, desc="shards", unit="utt", disable=None)
    for info in parallel_map(write_shard_job, _shard_jobs(s, filtered, stage_hash), s.jobs):
        split = info["path"].split("/")[1]
        made[split].append(info)
        bar.update(info["samples"] + sum(info["dropped"].values()))
        for reason, n in info["dropped"].items():
            drops.add(reason, "; ".join(info["examples"][reason][:1]), n)
        if info.get("resumed"):
            resumed += 1
        else:
            cpu_s += info["cpu_s"]
            hours_written += info["seconds"] / 3600.0
    bar.close()
    keep = {info["path"] for infos in made.values() for info in infos}
    for stale in (s.out / "shards").glob("*/*"):
        rel = f"shards/{stale.parent.name}/{stale.name.removesuffix('.info.json')}"
        if rel not in keep and rel + ".tar" not in keep:
            stale.unlink()
    index = build_index(made)
    write_json_atomic(s.out / "index.json", index)
    throughput = hours_written / cpu_s if cpu_s > 0 else 0.0
    log.info(
        "shards: wrote %.3f h of audio with %.1f CPU-s: %.4f h of audio per CPU-second "
        "(%.0fx real time per core), %.1f s wall; %d shard(s) already complete",
        hours_written,
        cpu_s,
        throughput,
        throughput * 3600.0,
        time.perf_counter() - start,
        resumed,
    )
    return {
        "splits": {split: index["splits"][split]["languages"] for split in SPLITS},
        "shards": {split: len(made[split]) for split in SPLITS},
        "bytes": sum(i.get("bytes", 0) for infos in made.values() for i in infos),
        "hours_per_cpu_second": throughput,
        "resumed_shards": resumed,
        **drops.report(),
    }


# ---------------------------------------------------------------------------- stage 4: verify


def verify_job(job: tuple[Path, str, int]) -> list[str]:
    return verify_shard(*job)


def stage_verify(s: PrepSettings, stage_hash: str) -> dict[str, Any]:
    """Decode every sample of every shard; fail naming the shard and key of any problem."""
    index = read_index(s.out)
    jobs = [
        (s.out / e["path"], e["languages"][0], e["samples"])
        for split in index["splits"].values()
        for e in split["shards"]
    ]
    problems: list[str] = []
    for found in tqdm(
        parallel_map(verify_job, jobs, s.jobs),
        total=len(jobs),
        desc="verify",
        unit="shard",
        disable=None,
    ):
        problems += found
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise PrepError(f"verify: {len(problems)} problem(s):\n  {shown}{more}")
    samples = sum(e["samples"] for split in index["splits"].values() for e in split["shards"])
    return {"shards": len(jobs), "samples": samples}


STAGES = [
    ("manifest", stage_manifest),
    ("tokenizer", stage_tokenizer),
    ("filter", stage_filter),
    ("shards", stage_shards),
    ("verify", stage_verify),
]
