"""Settings of a data preparation run; defaults shared with the run config come from there."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from whisfusion.config import CanvasConfig, DataConfig, TokenizerConfig
from whisfusion.data.shards import EVAL_ONLY_SPLITS


@dataclass
class Source:
    # Adapter name (see data_prep.adapters.ADAPTERS).
    kind: str
    # Corpus root directory.
    root: Path
    # Splits read as training data.
    train: list[str]
    # Splits read as validation data.
    valid: list[str]
    # Splits read as evaluation-only data: a held-out test set, human speech.
    test: list[str] = field(default_factory=list)
    human: list[str] = field(default_factory=list)
    # Splits read as the evaluation-only split of long clips (passages of several sentences).
    long: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        out = {"kind": self.kind, "root": str(self.root), "train": self.train, "valid": self.valid}
        # only when used, so that data directories prepared without them keep their stage hashes
        out.update({k: getattr(self, k) for k in EVAL_ONLY_SPLITS if getattr(self, k)})
        return out


@dataclass
class PrepSettings:
    # Output directory: every stage writes only under it (safe to delete and rerun).
    out: Path
    # Corpora to read.
    sources: list[Source]
    # Languages kept (others are dropped and reported); this order fixes the language token ids.
    languages: list[str] = field(default_factory=lambda: list(TokenizerConfig().languages))
    # SentencePiece vocabulary size.
    vocab_size: int = TokenizerConfig().vocab_size
    # SentencePiece model type (see whisfusion.tokenizer.MODEL_TYPES).
    model_type: str = TokenizerConfig().model_type
    # Longest utterance kept, seconds (the Whisper window).
    max_duration: float = DataConfig().max_duration
    # Canvas rule for the fit check; its r_max is ignored (the tokenizer stage measures it).
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    # Transcript lines per language for tokenizer training (sampled; repeated if fewer exist).
    tokenizer_lines: int = 100_000
    # Target shard size in MB; with the mean duration of a language it sets samples per shard.
    shard_size_mb: float = 1000.0
    # Samples per shard; overrides shard_size_mb (and streams) when > 0.
    shard_samples: int = 0
    # Training streams the shards are cut for (ranks x data.num_workers; 512 = 64 GPUs x 8
    # workers): training shards are made small enough that each language has this many, down
    # to data_prep.stages.MIN_SHARD_MB; 0 = by shard_size_mb alone.
    streams: int = 512
    # Worker processes for probing audio, writing and verifying shards (1 = no workers).
    jobs: int = 2
    # Seed of the tokenizer's line sampling.
    seed: int = 1234
    # Fingerprint of corpus content that paths do not capture (the demo corpus's settings).
    corpus_tag: str = ""

    def stage_inputs(self, stage: str) -> dict:
        """The settings a stage's output depends on (hashed into its done-marker)."""
        canvas = {k: v for k, v in asdict(self.canvas).items() if k != "r_max"}
        return {
            "manifest": {
                "sources": [s.describe() for s in self.sources],
                "languages": self.languages,
                "max_duration": self.max_duration,
                "corpus_tag": self.corpus_tag,
            },
            "tokenizer": {
                # what the stage writes: a data directory prepared before language_tokens.json
                # existed redoes this stage (and the later ones) once
                "outputs": ["tokenizer.model", "stats.json", "language_tokens.json"],
                "vocab_size": self.vocab_size,
                "model_type": self.model_type,
                "tokenizer_lines": self.tokenizer_lines,
                "seed": self.seed,
            },
            "filter": {"canvas": canvas},
            "shards": {
                "shard_size_mb": self.shard_size_mb,
                "shard_samples": self.shard_samples,
                "streams": self.streams,
            },
            "verify": {},
        }[stage]
