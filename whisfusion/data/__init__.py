"""The data path: manifests, WebDataset shards, the streaming DataModule, feature cache.

Modules (import from them directly; this package imports nothing heavy on its own):
    audio_io       decoding, 16 kHz mono, FLAC encoding
    manifest       the common JSONL manifest (`Utterance`)
    shards         the shard sample format, writer, reader, `index.json`, verification
    samples        raw sample -> `Example` (with its target canvas) -> batch dict
    stream         the resampled training stream and the exactly-once validation stream
    datamodule     `WhisfusionDataModule`
    stats          `DataStats`: read / kept / skipped-by-reason counters
    feature_cache  `FeatureCache`: frozen-encoder outputs on disk
"""
