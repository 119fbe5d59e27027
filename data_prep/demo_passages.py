"""Passages: consecutive utterances of the demo corpus joined into one long clip.

The synthesized sentences last 1-10 s, while read prompts, dictation and the clips a user
brings run to 30 s. A passage joins 2-4 utterances of one language (mostly of one voice: rows
are taken in voice order) with a short pause between them, and its transcript is theirs joined
(with a space, without one in zh / ja). No new synthesis: the clips already made are reused.

    plan = plan_passages(rows, sizes=(2, 4), max_seconds=28.0, seed="0:en:train")
    durations = [join_passage(p, corpus, out / p.row["audio"]) for p in plan]
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from whisfusion.audio import SAMPLE_RATE
from whisfusion.scoring.normalizers import UNSPACED_LANGUAGES

# Pause between the joined utterances, seconds (drawn per gap): a speaker's breath between
# sentences; the synthesized clips carry little silence of their own at either end.
PAUSE_S = (0.2, 0.6)


@dataclass
class Passage:
    # Manifest row of the passage (id, audio, text, lang, speaker; no duration yet).
    row: dict
    # The joined utterances' audio paths, relative to the corpus root, in order.
    parts: list[str]
    # Pause after each part but the last, seconds.
    pauses: list[float]


def plan_passages(
    rows: Sequence[dict], sizes: Sequence[int], max_seconds: float, seed: str, split: str
) -> list[Passage]:
    """Every passage of one language's `rows` (manifest rows with `duration`).

    The rows are ordered by voice (in seeded order within a voice) and cut, in that order,
    into runs of a seeded size in [sizes[0], sizes[1]]; a run stops early where one more
    utterance would take it past `max_seconds`, and a run of one utterance is no passage.
    Ids are `demo-<lang>-<split>-passage-<k>`, k counting the passages in order.
    """
    lo, hi = sizes
    if not 2 <= lo <= hi:
        raise ValueError(f"passage sizes must satisfy 2 <= min <= max, got {list(sizes)}")
    rng = random.Random(seed)
    order = sorted(rows, key=lambda r: (r["speaker"], rng.random()))
    passages: list[Passage] = []
    i = 0
    while i < len(order):
        want = rng.randint(lo, hi)
        run = [order[i]]
        seconds = order[i]["duration"]
        while len(run) < want and i + len(run) < len(order):
            nxt = order[i + len(run)]
            seconds += PAUSE_S[1] + nxt["duration"]
            if seconds > max_seconds:
                break
            run.append(nxt)
        i += len(run)
        if len(run) > 1:
            passages.append(_passage(run, len(passages), split, rng))
    return passages


def _passage(run: list[dict], k: int, split: str, rng: random.Random) -> Passage:
    lang = run[0]["lang"]
    utt_id = f"demo-{lang}-{split}-passage-{k:05d}"
    speakers = list(dict.fromkeys(r["speaker"] for r in run))
    row = {
        "id": utt_id,
        "audio": f"audio/{lang}/{utt_id}.flac",
        "text": ("" if lang in UNSPACED_LANGUAGES else " ").join(r["text"] for r in run),
        "lang": lang,
        # one voice, or the voices in order (a passage may cross a change of voice)
        "speaker": " + ".join(speakers),
    }
    pauses = [round(rng.uniform(*PAUSE_S), 3) for _ in run[1:]]
    return Passage(row, [r["audio"] for r in run], pauses)


def join_passage(passage: Passage, corpus: Path, out_path: Path) -> float:
    """Write the passage's audio (its parts, 16 kHz, with their pauses) as FLAC; its seconds.

    Raises:
        ValueError: a part is not a 16 kHz mono file (as the demo corpus writes them).
    """
    pieces = []
    for part, pause in zip(passage.parts, [*passage.pauses, 0.0], strict=True):
        wave, rate = sf.read(corpus / part, dtype="float32")
        if rate != SAMPLE_RATE or wave.ndim != 1:
            raise ValueError(f"{corpus / part}: expected 16 kHz mono, got {rate} Hz {wave.shape}")
        pieces += [wave, np.zeros(round(pause * SAMPLE_RATE), dtype=np.float32)]
    audio = np.concatenate(pieces)
    sf.write(out_path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return audio.size / SAMPLE_RATE
