"""The common manifest: one JSON object per line, one line per utterance.

    {"id": "librispeech-103-1240-0000", "audio": "/corpora/.../103-1240-0000.flac",
     "duration": 14.245, "text": "CHAPTER ONE ...", "lang": "en", "speaker": "103"}

`text` is the transcript exactly as the corpus gives it: training targets keep casing and
punctuation. Text normalizers are applied only when scoring.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

# Ids double as WebDataset keys and cache file names: no dots (WebDataset splits keys at the
# first dot), no slashes.
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def safe_id(raw: str) -> str:
    """An utterance id usable as a WebDataset key and a file name (`a/b.c` -> `a_b_c`)."""
    return _UNSAFE_ID_CHARS.sub("_", raw)


@dataclass
class Utterance:
    # Unique id (see `safe_id`).
    id: str
    # Path of the audio file.
    audio: str
    # Seconds of audio.
    duration: float
    # Transcript, casing and punctuation kept.
    text: str
    # Language code, e.g. "en".
    lang: str
    # Speaker id when the corpus has one.
    speaker: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


_REQUIRED = ("id", "audio", "duration", "text", "lang")


def parse_utterance(line: str, where: str) -> Utterance:
    """One manifest line -> `Utterance`.

    Raises:
        ValueError: not JSON, or a field missing or of the wrong type (message names `where`).
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not a JSON object ({err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: not a JSON object")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    try:
        duration = float(obj["duration"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: duration {obj['duration']!r} is not a number") from None
    speaker = obj.get("speaker")
    return Utterance(
        id=str(obj["id"]),
        audio=str(obj["audio"]),
        duration=duration,
        text=str(obj["text"]),
        lang=str(obj["lang"]),
        speaker=None if speaker is None else str(speaker),
    )


def read_manifest(path: str | Path) -> Iterator[Utterance]:
    """Stream the utterances of a JSONL manifest (blank lines are ignored)."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield parse_utterance(line, f"{path}:{lineno}")


class ManifestWriter:
    """Append utterances to a JSONL manifest; written to a temporary name, renamed on close."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._f = self._tmp.open("w", encoding="utf-8")
        self.count = 0
        self.seconds = 0.0

    def write(self, utt: Utterance) -> None:
        self._f.write(utt.to_json() + "\n")
        self.count += 1
        self.seconds += utt.duration

    def close(self) -> None:
        self._f.close()
        self._tmp.replace(self.path)

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
