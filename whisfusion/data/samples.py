"""From raw shard samples to training examples, and from examples to the batch dict.

The batch dict is the contract with the LightningModule:
    audio        (B, S) float32, 16 kHz, zero-padded
    audio_lens   (B,) int64 samples
    tokens       (B, L) int64 target canvases `[<|lang|>] text <|eos|> ...`, EOS-padded
    canvas_valid (B, L) bool, True on each utterance's own canvas positions
    ids, langs, texts: list[str] of length B
    durations    (B,) float32 seconds
    dup          (B,) bool, True on validation padding rows (score each id once)
    augmented    (B,) bool, True on training rows whose audio was augmented (see augment.py)
    stats        {name: count} read / kept / skipped-by-reason since the worker's last batch
    audio_lens_host  list[int], audio_lens kept on the host (added by the data module before
                 the batch goes to the device)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from whisfusion.canvas import build_canvas, canvas_length, pad_canvases
from whisfusion.config import CanvasConfig
from whisfusion.data import stats as S
from whisfusion.data.audio_io import SAMPLE_RATE
from whisfusion.data.shards import decode_sample
from whisfusion.tokenizer import Tokenizer, tokenizer_from_bytes

# Batch key of `audio_lens` as a list of ints, which stays on the host when a batch is moved.
HOST_LENGTHS = "audio_lens_host"


@dataclass
class Example:
    id: str
    lang: str
    text: str
    # (S,) float32 at 16 kHz.
    audio: np.ndarray
    # (L,) int64 target canvas.
    canvas: torch.Tensor
    # True for a validation padding row that repeats an utterance already scored.
    dup: bool = False
    # True when training augmentation changed the audio (its features are not the corpus's).
    augmented: bool = False

    @property
    def duration(self) -> float:
        return self.audio.size / SAMPLE_RATE

    def as_dup(self) -> Example:
        return dataclasses.replace(self, dup=True)


class ExampleDecoder:
    """Turns a raw shard sample into an `Example`, or raises `BadSample` saying why not.

    Holds the tokenizer as serialized bytes so that it pickles into DataLoader workers.
    """

    def __init__(self, tokenizer: Tokenizer, canvas_cfg: CanvasConfig, max_duration: float):
        self._proto = tokenizer.to_bytes()
        self._tok: Tokenizer | None = None
        self.canvas_cfg = canvas_cfg
        self.max_duration = max_duration

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tok is None:
            self._tok = tokenizer_from_bytes(self._proto)
        return self._tok

    def __call__(self, raw: dict[str, Any]) -> Example:
        meta, audio = decode_sample(raw)
        text = str(meta["text"])
        if not text.strip():
            raise S.BadSample(S.EMPTY_TEXT, "empty transcript")
        tok = self.tokenizer
        if meta["lang"] not in tok.languages:
            raise S.BadSample(S.UNKNOWN_LANGUAGE, f"{meta['lang']!r} has no language token")
        duration = audio.size / SAMPLE_RATE
        if duration > self.max_duration:
            raise S.BadSample(S.TOO_LONG, f"{duration:.2f} s > {self.max_duration} s")
        try:
            canvas = build_canvas(
                tok.encode(text),
                tok.lang_id(meta["lang"]),
                tok.eos_id,
                canvas_length(duration, self.canvas_cfg),
            )
        except ValueError as err:
            raise S.BadSample(S.CANVAS_OVERFLOW, str(err)) from None
        return Example(id=str(meta["id"]), lang=meta["lang"], text=text, audio=audio, canvas=canvas)


def collate(examples: Sequence[Example], eos_id: int, stats: dict[str, int]) -> dict[str, Any]:
    """Examples -> the batch dict described in this module's docstring."""
    lens = torch.tensor([e.audio.size for e in examples], dtype=torch.long)
    audio = torch.zeros(len(examples), int(lens.max()), dtype=torch.float32)
    for i, e in enumerate(examples):
        audio[i, : e.audio.size] = torch.from_numpy(e.audio)
    tokens, valid = pad_canvases([e.canvas for e in examples], eos_id)
    return {
        "audio": audio,
        "audio_lens": lens,
        "tokens": tokens,
        "canvas_valid": valid,
        "ids": [e.id for e in examples],
        "langs": [e.lang for e in examples],
        "texts": [e.text for e in examples],
        "durations": lens.to(torch.float32) / SAMPLE_RATE,
        "dup": torch.tensor([e.dup for e in examples], dtype=torch.bool),
        "augmented": torch.tensor([e.augmented for e in examples], dtype=torch.bool),
        "stats": stats,
    }
