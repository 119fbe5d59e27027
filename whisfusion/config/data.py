"""Data configuration: where the shards are and how they are streamed and batched."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    # Directory written by data_prep (shards, index.json, tokenizer); "" = none (generated data).
    root: str = ""
    # Training shards: a brace pattern or directory; "" = `<root>/shards/train`.
    train_shards: str = ""
    # Validation shards: a brace pattern or directory; "" = `<root>/shards/valid`.
    val_shards: str = ""
    # Utterances per batch (upper bound; see max_batch_seconds).
    batch_size: int = 16
    # Seconds of audio per batch; 0 = no limit. Caps memory on long clips.
    max_batch_seconds: float = 0.0
    # DataLoader worker processes per rank.
    num_workers: int = 2
    # Samples held in the shuffle buffer of each worker.
    shuffle_buffer: int = 1000
    # Language sampling temperature over the index's hours (1 = proportional, 0 = uniform).
    language_temperature: float = 0.5
    # Explicit per-language weights; overrides language_temperature when non-empty.
    language_weights: dict[str, float] = field(default_factory=dict)
    # Duration buckets (seconds, upper edges) for batching similar-length clips together.
    bucket_edges: list[float] = field(default_factory=lambda: [4.0, 8.0, 15.0, 30.0])
    # Longest clip accepted (seconds); longer samples are skipped and counted.
    max_duration: float = 30.0
    # Share of training clips sent through an 8 kHz mu-law telephone line (0 = none): speech
    # from phones and VoIP has nothing above 4 kHz, which wideband corpora never show.
    augment_telephone: float = 0.0
    # Share of training clips played 0.9x or 1.1x as fast, tempo and pitch together (0 = none):
    # new speaking rates and voices from the same recordings.
    augment_speed: float = 0.0
    # Directory for cached frozen-encoder outputs (small corpora only); "" = no cache.
    feature_cache: str = ""
    # Seed of the data stream (combined with rank, worker and step).
    seed: int = 1234
    # Validation utterances per language at most (None = all).
    val_max_per_language: int | None = None
