"""faster-whisper (CTranslate2) on the real Whisper-base weights: the CPU speed users know.

Timed end to end per clip: log-mel, the 30 s encoder window, decoding, detokenizing; no voice
activity detection, language given (espeak-ng speaks English), no timestamps, so it does the
same job as the decoders beside it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from bench.timing import Timing, time_call
from whisfusion.audio import SAMPLE_RATE


@dataclass(frozen=True)
class ReferenceSetting:
    # CTranslate2 weight type the model is run in.
    compute_type: str
    # Beam width: 1 is greedy (as the autoregressive decoder timed beside it); 5 is
    # faster-whisper's default.
    beam_size: int


SETTINGS = (
    ReferenceSetting("int8", 1),
    ReferenceSetting("int8", 5),
    ReferenceSetting("float32", 1),
)


def unavailable_reason() -> str | None:
    """Why faster-whisper cannot run here, or None when it can."""
    if importlib.util.find_spec("faster_whisper") is None:
        return "faster-whisper is not installed (`pip install faster-whisper`)"
    return None


def _transcribe_all(model, audio: Sequence, beam_size: int, outputs: list[list]) -> None:
    """Transcribe every clip; `outputs` receives the segments of each."""
    outputs.clear()
    for a in audio:
        segments, _ = model.transcribe(
            a,
            language="en",
            beam_size=beam_size,
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        outputs.append(list(segments))  # decoding happens while the segments are read


def time_faster_whisper(
    model_dir: Path,
    clips: Sequence[torch.Tensor],
    threads: int,
    warmup: int,
    repeats: int,
    max_time_s: float,
) -> list[dict]:
    """Per setting: the time to transcribe every clip one after another, and what came out."""
    from faster_whisper import WhisperModel

    audio = [clip.numpy() for clip in clips]
    audio_s = sum(len(a) for a in audio) / SAMPLE_RATE
    rows = []
    for setting in SETTINGS:
        model = WhisperModel(
            str(model_dir), device="cpu", compute_type=setting.compute_type, cpu_threads=threads
        )
        outputs: list[list] = []
        run = partial(_transcribe_all, model, audio, setting.beam_size, outputs)
        timing: Timing = time_call(run, torch.device("cpu"), warmup, repeats, max_time_s)
        rows.append(
            {
                "compute_type": setting.compute_type,
                "beam_size": setting.beam_size,
                "clips": len(audio),
                "audio_s": round(audio_s, 3),
                "median_s": timing.median_s,
                "samples_s": list(timing.samples_s),
                "rtfx": audio_s / timing.median_s,
                "tokens_per_clip": [sum(len(s.tokens) for s in segs) for segs in outputs],
                "texts": [" ".join(s.text.strip() for s in segs) for segs in outputs],
            }
        )
    return rows
