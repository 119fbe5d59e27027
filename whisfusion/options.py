"""`DecodeOptions`: the settings of one decoding run, built once and passed down whole.

    options = DecodeOptions.from_config(model.cfg.decode, steps=8, temperature=0.5)
    model.transcribe(files, options=options)

The keys, their meaning and their defaults are `DecodeConfig`'s (whisfusion.config.decode);
`from_config` checks what can be checked without a model, `Whisfusion.check_options` what the
model must have for them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from whisfusion.audio import CHUNK_LENGTH
from whisfusion.config.decode import DECODE_DTYPES, DECODE_METHODS, DecodeConfig
from whisfusion.pdd.sampler import REMASKING, check_order
from whisfusion.pdd.select import METHODS


@dataclass(frozen=True)
class DecodeOptions:
    method: str
    steps: int
    candidates: int
    remasking: str
    random_schedule: tuple[float, ...]
    blocks: int
    eos_threshold: float
    commit_threshold: float
    kv_refresh: int
    temperature: float
    select: str
    align_weight: float | None
    language_vocab_min_count: int
    blank_penalty: float
    seed: int
    batch_size: int
    dtype: str
    int8: bool
    compile: bool
    canvas_buckets: tuple[int, ...]
    max_padding: float
    segment_s: float

    @classmethod
    def from_config(cls, cfg: DecodeConfig, **overrides) -> DecodeOptions:
        """`cfg` with every non-None keyword of `overrides` replacing its key, checked.

        Raises:
            ValueError: an unknown key, or a value out of range (naming the key).
        """
        values = dataclasses.asdict(cfg)
        unknown = set(overrides) - set(values)
        if unknown:
            raise ValueError(f"unknown decode options: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["random_schedule"] = tuple(values["random_schedule"])
        values["canvas_buckets"] = tuple(values["canvas_buckets"])
        return cls(**values)

    def replace(self, **overrides) -> DecodeOptions:
        """These options with every non-None keyword replaced, checked."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def __post_init__(self):
        choices = {
            "method": ("decode method", DECODE_METHODS),
            "remasking": ("remasking", REMASKING),
            "select": ("selection method", METHODS),
            "dtype": ("decode.dtype", DECODE_DTYPES),
        }
        for key, (name, allowed) in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(allowed)}; got '{getattr(self, key)}'"
                )
        for key in ("steps", "candidates", "batch_size", "kv_refresh"):
            if getattr(self, key) < 1:
                raise ValueError(f"decode {key} must be >= 1, got {getattr(self, key)}")
        for key in ("temperature", "blank_penalty", "language_vocab_min_count", "max_padding"):
            if getattr(self, key) < 0:
                raise ValueError(f"decode.{key} must be >= 0, got {getattr(self, key)}")
        check_order(
            self.steps, self.remasking, self.blocks, self.eos_threshold, self.commit_threshold
        )
        if not 0.0 <= self.segment_s <= CHUNK_LENGTH:
            raise ValueError(
                f"decode.segment_s must lie in [0, {CHUNK_LENGTH}] (0 = off), got {self.segment_s}"
            )
        if self.int8 and self.compile:
            raise ValueError("decode.int8 and decode.compile do not combine: choose one")
        if self.kv_refresh > 1 and self.compile:
            raise ValueError(
                "decode.kv_refresh > 1 and decode.compile do not combine: a compiled step "
                "keeps one shape, a reusing step runs a different number of positions each time"
            )
        if not self.random_schedule or any(not 0.0 <= r <= 1.0 for r in self.random_schedule):
            raise ValueError(
                f"decode.random_schedule needs shares in [0, 1], got {list(self.random_schedule)}"
            )
