"""WebDataset shards: the sample format, writing, reading, the index, and verification.

A shard is a tar holding one language; each sample is two members:
    <id>.flac   16 kHz mono 16-bit FLAC
    <id>.json   {"id", "lang", "text", "duration", "speaker"}
`<data>/index.json` lists every shard (paths relative to `<data>`) and totals per language:
    {"version": 1, "sample_rate": 16000,
     "splits": {"train": {"shards": [{"path": "shards/train/en-000000.tar", "samples": 812,
                                       "hours": 1.02, "languages": ["en"]}, ...],
                          "languages": {"en": {"shards": 3, "samples": 2400, "hours": 3.1}}},
                "valid": {...}, "test": {...}, "human": {...}, "long": {...}}}
(`test`, `human` and `long` are evaluation-only splits and may be empty.)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from webdataset.tariterators import tarfile_samples

from whisfusion.data import stats as S
from whisfusion.data.audio_io import SAMPLE_RATE, encode_flac, read_audio, to_mono_16k
from whisfusion.data.manifest import Utterance

INDEX_VERSION = 1
# Splits a data directory may hold: training, validation (the development set that training
# validates on and choices are made on), and evaluation-only sets never trained or chosen on.
SPLITS = ("train", "valid", "test", "human", "long")
EVAL_ONLY_SPLITS = ("test", "human", "long")
# Members of a sample in a shard.
AUDIO_KEY = "flac"
META_KEY = "json"


# ---------------------------------------------------------------------------- sample format


def encode_sample(utt: Utterance) -> dict[str, Any]:
    """Read, downmix, resample and FLAC-encode one utterance into a WebDataset sample.

    Raises:
        BadSample: the audio cannot be read, is empty or holds non-finite values.
    """
    try:
        samples, rate = read_audio(utt.audio)
    except Exception as err:  # libsndfile raises several types, FileNotFoundError among them
        raise S.BadSample(S.UNDECODABLE_AUDIO, f"{utt.audio}: {err}") from None
    wave = to_mono_16k(samples, rate)
    if wave.size == 0:
        raise S.BadSample(S.EMPTY_AUDIO, f"{utt.audio}: no samples")
    if not np.isfinite(wave).all():
        raise S.BadSample(S.NAN_AUDIO, f"{utt.audio}: NaN or infinite samples")
    meta = {
        "id": utt.id,
        "lang": utt.lang,
        "text": utt.text,
        "duration": wave.size / SAMPLE_RATE,
        "speaker": utt.speaker,
    }
    return {
        "__key__": utt.id,
        AUDIO_KEY: encode_flac(wave),
        META_KEY: json.dumps(meta, ensure_ascii=False).encode("utf-8"),
    }


def decode_sample(raw: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """A raw WebDataset sample -> (metadata dict, (S,) float32 audio at 16 kHz).

    Raises:
        BadSample: member missing, JSON unreadable, audio undecodable, not 16 kHz, not mono,
            empty, or holding NaN / inf.
    """
    for member in (META_KEY, AUDIO_KEY):
        if member not in raw:
            raise S.BadSample(S.MISSING_FIELD, f"no .{member} member")
    try:
        meta = json.loads(raw[META_KEY])
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as err:
        raise S.BadSample(S.BAD_JSON, str(err)) from None
    missing = [k for k in ("id", "lang", "text") if k not in meta]
    if missing:
        raise S.BadSample(S.MISSING_FIELD, f"json lacks {', '.join(missing)}")
    try:
        samples, rate = read_audio(raw[AUDIO_KEY])
    except Exception as err:  # libsndfile raises several types
        raise S.BadSample(S.UNDECODABLE_AUDIO, str(err)) from None
    if rate != SAMPLE_RATE:
        raise S.BadSample(S.BAD_SAMPLE_RATE, f"{rate} Hz, expected {SAMPLE_RATE}")
    if samples.shape[1] != 1:
        raise S.BadSample(S.BAD_CHANNELS, f"{samples.shape[1]} channels, expected 1")
    if samples.shape[0] == 0:
        raise S.BadSample(S.EMPTY_AUDIO, "no samples")
    if not np.isfinite(samples).all():
        raise S.BadSample(S.NAN_AUDIO, "NaN or infinite samples")
    return meta, samples[:, 0]


# ---------------------------------------------------------------------------- writing


def write_shard(path: Path, utterances: Sequence[Utterance]) -> dict[str, Any]:
    """Write one shard (to a temporary name, renamed when complete).

    Returns:
        {"samples", "seconds", "bytes", "cpu_s", "dropped": {reason: count},
         "examples": {reason: [id, ...]}} for the data-prep report.
    """
    start = time.process_time()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    dropped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    samples, seconds = 0, 0.0
    with wds.TarWriter(str(tmp), encoder=False, mtime=0.0) as sink:
        for utt in utterances:
            try:
                sample = encode_sample(utt)
            except S.BadSample as bad:
                dropped[bad.reason] += 1
                examples.setdefault(bad.reason, []).append(f"{utt.id} ({bad.detail})")
                continue
            sink.write(sample)
            samples += 1
            seconds += json.loads(sample[META_KEY])["duration"]
    tmp.replace(path)
    return {
        "samples": samples,
        "seconds": seconds,
        "bytes": path.stat().st_size,
        "cpu_s": time.process_time() - start,
        "dropped": dict(dropped),
        "examples": {k: v[:5] for k, v in examples.items()},
    }


# ---------------------------------------------------------------------------- reading


def tar_is_complete(path: str) -> bool:
    """Whether a tar file ends with the end-of-archive marker (two zero blocks).

    Python's tarfile treats a file cut short at a member boundary as a normal end, so a
    truncated shard would otherwise go unnoticed.
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < 1024 or size % 512:
            return False
        f.seek(size - 1024)
        return not any(f.read(1024))


def iter_shard(path: str, on_error: Callable[[str, Exception], None]) -> Iterator[dict[str, Any]]:
    """Raw samples `{"__key__", "__url__", "flac", "json"}` of one shard, in order.

    A missing or truncated shard is reported once through `on_error(path, error)` and yields
    nothing (a truncated shard's last sample could be cut too); an error inside a shard ends it
    early. Nothing is raised, so a stream can go on with other shards.
    """
    try:
        complete = tar_is_complete(path)
    except OSError as err:
        on_error(path, err)
        return
    if not complete:
        on_error(path, OSError("truncated: no end-of-archive marker"))
        return
    failed: list[Exception] = []

    def handler(exn: Exception) -> bool:
        if not failed:
            on_error(path, exn)
        failed.append(exn)
        return True  # go on: the shard's remaining readable samples still come through

    yield from tarfile_samples([{"url": path}], handler=handler)


# ---------------------------------------------------------------------------- the index


def build_index(shards: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Index from `{split: [{"path", "samples", "seconds", "language"}, ...]}`."""
    splits = {}
    for split, entries in shards.items():
        listed = []
        totals: dict[str, dict[str, float]] = {}
        for e in sorted(entries, key=lambda e: e["path"]):
            listed.append(
                {
                    "path": e["path"],
                    "samples": e["samples"],
                    "hours": e["seconds"] / 3600.0,
                    "languages": [e["language"]],
                }
            )
            t = totals.setdefault(e["language"], {"shards": 0, "samples": 0, "hours": 0.0})
            t["shards"] += 1
            t["samples"] += e["samples"]
            t["hours"] += e["seconds"] / 3600.0
        splits[split] = {"shards": listed, "languages": dict(sorted(totals.items()))}
    return {"version": INDEX_VERSION, "sample_rate": SAMPLE_RATE, "splits": splits}


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary name and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_index(root: str | Path) -> dict[str, Any]:
    """`<root>/index.json`, checked for its version and layout."""
    path = Path(root) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"shard index not found: {path} (run data_prep first)")
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("version") != INDEX_VERSION or "splits" not in index:
        raise ValueError(f"{path}: not a version-{INDEX_VERSION} shard index")
    return index


# ---------------------------------------------------------------------------- verification


def verify_shard(path: Path, lang: str, expected_samples: int) -> list[str]:
    """Decode every sample of a shard and check it against its JSON and the index.

    Returns:
        Problems, each naming the shard and key; empty when the shard is sound.
    """
    problems: list[str] = []

    def on_error(url: str, err: Exception) -> None:
        problems.append(f"{url}: unreadable shard ({err})")

    count = 0
    for raw in iter_shard(str(path), on_error):
        count += 1
        where = f"{path} key {raw['__key__']}"
        try:
            meta, audio = decode_sample(raw)
        except S.BadSample as bad:
            problems.append(f"{where}: {bad.reason}: {bad.detail}")
            continue
        if meta["id"] != raw["__key__"]:
            problems.append(f"{where}: json id {meta['id']!r} differs from the key")
        if meta["lang"] != lang:
            problems.append(f"{where}: language {meta['lang']!r} in a {lang!r} shard")
        if not str(meta["text"]).strip():
            problems.append(f"{where}: empty text")
        actual = audio.size / SAMPLE_RATE
        if not math.isclose(float(meta.get("duration", -1)), actual, abs_tol=1.0 / SAMPLE_RATE):
            problems.append(
                f"{where}: json duration {meta.get('duration')} s, audio {actual:.4f} s"
            )
    if count != expected_samples:
        problems.append(f"{path}: {count} samples, the index says {expected_samples}")
    return problems
