"""Small corpora made on the spot for the data tests: audio files plus a JSONL manifest."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf

WORDS = {
    "en": "the cat sat on a mat and then it ran to the old red house by the sea".split(),
    "de": "der Hund lief schnell über die grüne Wiese und dann nach Hause zurück".split(),
}


def write_audio(
    path: Path,
    seconds: float,
    *,
    rate: int = 16000,
    channels: int = 1,
    seed: int = 0,
    fmt: str | None = None,
    subtype: str | None = "PCM_16",
) -> np.ndarray:
    """A tone plus noise (so FLAC cannot compress it to nothing); returns the written samples."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed % 400) * t) + 0.05 * rng.standard_normal(n)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data.astype(np.float32), rate, format=fmt, subtype=subtype)
    return data


def sentence(lang: str, rng: random.Random, n_words: int | None = None) -> str:
    words = rng.choices(WORDS[lang], k=n_words or rng.randint(2, 5))
    return " ".join(words).capitalize() + "."


def tone_corpus(
    root: Path, per_lang: dict[str, tuple[int, int]], seed: int = 0
) -> dict[str, list[dict]]:
    """`root/{train,valid}.jsonl` plus WAV files: per language (train count, valid count).

    Returns the manifest rows by split.
    """
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {"train": [], "valid": []}
    k = 0
    for lang, counts in per_lang.items():
        for split, count in zip(("train", "valid"), counts, strict=True):
            for i in range(count):
                seconds = round(rng.uniform(0.6, 1.6), 3)
                audio = f"audio/{lang}-{split}-{i}.wav"
                write_audio(root / audio, seconds, seed=k)
                k += 1
                rows[split].append(
                    {
                        "id": f"{lang}-{split}-{i}",
                        "audio": audio,
                        "text": sentence(lang, rng),
                        "lang": lang,
                        "speaker": f"spk{i % 3}",
                    }
                )
    for split, split_rows in rows.items():
        with (root / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows)
    return rows
