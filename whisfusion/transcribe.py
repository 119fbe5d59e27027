"""Batched transcription: audio files or waveforms in, one transcript per input out, in order.

    results = transcribe_audio(model, ["a.flac", "b.mp3", waveform], language="en")
    results[0].path, results[0].text, results[0].language, results[0].error

Each batch runs the whole pipeline: load (decode, downmix, resample to 16 kHz) -> log-mel and
frozen encoder -> PDD -> detokenize and select.
- Inputs are ordered by duration, longest first, and packed into batches of at most
  `decode.batch_size` rows: similar lengths pad little, and a batch too large for memory fails
  at the start of a run rather than at its end. Results come back in input order.
- Audio longer than the encoder window is cut into overlapping chunks (`plan_chunks`). The
  chunks of one input are rows of the same batch, decoded in parallel in one decoder call
  (consecutive batches only when there are more chunks than rows), and their transcripts are
  merged (`merge_chunk_texts`), character by character for Chinese, Japanese and Korean.
  With `decode.segment_s`, audio longer than that is cut at its pauses into segments instead
  (`plan_segments`), decoded the same way and joined in order.
- An input that cannot be read is logged, returned as an entry with `error` set, and skipped;
  the others are still transcribed.
- One generator seeded with `decode.seed` drives all sampling noise: the same inputs, seed and
  batch size give the same transcripts. Greedy decoding (candidates 1, or temperature 0 with
  low_confidence remasking) draws no noise, so it does not depend on the batch size either,
  up to the rounding differences between batch shapes (which can flip a near-tie on a GPU).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import soundfile
import torch
from tqdm.auto import tqdm

from whisfusion.audio import SAMPLE_RATE, load_audio
from whisfusion.longform import join_segment_texts, merge_chunk_texts, plan_chunks, plan_segments
from whisfusion.options import DecodeOptions
from whisfusion.pdd import Transcript
from whisfusion.precision import decoding_precision, resolve_dtype
from whisfusion.scoring.normalizers import unit_for

if TYPE_CHECKING:
    from whisfusion.model import Whisfusion

log = logging.getLogger(__name__)

AudioInput = str | os.PathLike | torch.Tensor | np.ndarray
# What loading an input may raise when the input itself is at fault (missing, undecodable,
# empty, ...); anything else is a bug and propagates.
LOAD_ERRORS = (OSError, ValueError, RuntimeError)


@dataclass(frozen=True)
class AudioSource:
    """One input of the pipeline: a name, a duration to order by, and how to load it."""

    # Path of the file, "<array N>" for the N-th input when it is a waveform, or an utterance id.
    name: str
    # Seconds of audio, used only to order the inputs (an estimate will do; 0 if unknown).
    duration: float
    # Returns the (S,) float waveform at 16 kHz; raises one of LOAD_ERRORS for a bad input.
    load: Callable[[], torch.Tensor]
    # Language fixed on the canvas; None lets the decoder predict it.
    language: str | None = None


@dataclass(frozen=True)
class FileTranscript:
    """The transcript of one input."""

    # The input's `AudioSource.name`: its path, "<array N>", or an utterance id.
    path: str
    # The transcript; "" when the input could not be transcribed.
    text: str
    # The given language, else the one predicted (the majority over chunks); None when unknown.
    language: str | None
    # Seconds of 16 kHz audio transcribed (0 when the input could not be loaded).
    duration: float = 0.0
    # Chunks the audio was cut into (1 up to the encoder window, 0 when not loaded).
    chunks: int = 0
    # Why the input could not be transcribed; None when it was.
    error: str | None = None
    # Per chunk, the canvas after each denoising step; None unless requested.
    trajectory: list[list[str]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class StageTimes:
    """Wall seconds per pipeline stage: "load", "encode" (log-mel + encoder), "decode" (PDD,
    detokenize, select). CUDA work is waited for when a stage ends, so that asynchronous
    kernels are charged to the stage that queued them."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class _Chunk:
    # Index of the input (in the caller's order) this chunk belongs to.
    source: int
    # (S,) 16 kHz samples.
    audio: torch.Tensor
    language: str | None


def check_languages(languages: Sequence[str | None], known: Sequence[str]) -> None:
    """Raises ValueError naming a given language the model has no token for."""
    for lang in dict.fromkeys(languages):
        if lang is not None and lang not in known:
            raise ValueError(f"language '{lang}' is not one the model knows: {', '.join(known)}")


def _probe_seconds(path: str) -> float:
    """Duration from the file's header; 0 when unreadable (loading it reports why)."""
    try:
        return float(soundfile.info(path).duration)
    except LOAD_ERRORS:
        return 0.0


def _waveform(array: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float32)


def sources_from_inputs(
    inputs: AudioInput | Sequence[AudioInput],
    language: str | Sequence[str | None] | None = None,
) -> list[AudioSource]:
    """Paths and 1-D 16 kHz waveforms (one, or a list mixing them) as pipeline sources.

    Args:
        language: one code for every input, one per input (None entries predicted), or None.
    Raises:
        ValueError: a waveform that is not 1-D, an input of another type, or a language list of
            the wrong length.
    """
    single = isinstance(inputs, (str, os.PathLike, torch.Tensor, np.ndarray))
    items = [inputs] if single else list(inputs)
    if language is None or isinstance(language, str):
        languages = [language] * len(items)
    else:
        languages = list(language)
        if len(languages) != len(items):
            raise ValueError(f"{len(languages)} languages given for {len(items)} inputs")
    sources = []
    for i, (item, lang) in enumerate(zip(items, languages, strict=True)):
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            sources.append(AudioSource(path, _probe_seconds(path), partial(load_audio, path), lang))
        elif isinstance(item, (torch.Tensor, np.ndarray)):
            if item.ndim != 1:
                raise ValueError(
                    f"input {i}: a waveform must be 1-D (samples at {SAMPLE_RATE} Hz), got shape "
                    f"{tuple(item.shape)}; pass several waveforms as a list"
                )
            sources.append(
                AudioSource(
                    f"<array {i}>", item.shape[0] / SAMPLE_RATE, partial(_waveform, item), lang
                )
            )
        else:
            raise ValueError(
                f"input {i}: expected a path or a 1-D waveform, got {type(item).__name__}"
            )
    return sources


def _load(source: AudioSource) -> torch.Tensor:
    """The source's waveform, checked: 1-D, not empty, finite."""
    audio = torch.as_tensor(source.load(), dtype=torch.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {tuple(audio.shape)}")
    if audio.numel() == 0:
        raise ValueError("no audio samples")
    if not bool(torch.isfinite(audio).all()):
        raise ValueError("audio holds NaN or infinite samples")
    return audio


def pack_batches(inputs: Iterator[list[_Chunk]], batch_size: int) -> Iterator[list[_Chunk]]:
    """Batches of at most `batch_size` chunks that keep each input's chunks together.

    An input whose chunks do not fit the current batch starts the next one; one with more
    chunks than `batch_size` fills whole batches and leaves its remainder to the next.
    """
    batch: list[_Chunk] = []
    for chunks in inputs:
        if batch and len(batch) + len(chunks) > batch_size:
            yield batch
            batch = []
        while len(chunks) > batch_size:
            yield chunks[:batch_size]
            chunks = chunks[batch_size:]
        batch += chunks
    if batch:
        yield batch


def _decode_batch(
    model: Whisfusion,
    chunks: list[_Chunk],
    options: DecodeOptions,
    generator: torch.Generator,
    return_trajectory: bool,
    times: StageTimes,
) -> list[Transcript]:
    """One encoder call and one PDD call over the chunks of a batch."""
    with times.stage("encode", model.device):
        lengths = torch.tensor([c.audio.numel() for c in chunks])
        audio = torch.zeros(len(chunks), int(lengths.max()))
        for row, chunk in enumerate(chunks):
            audio[row, : chunk.audio.numel()] = chunk.audio
        features, valid = model.encode(audio, lengths, resolve_dtype(options.dtype, model.device))
    with times.stage("decode", model.device), decoding_precision(options.dtype, model.device):
        return model.decode_features(
            features,
            valid,
            (lengths / SAMPLE_RATE).tolist(),
            [c.language for c in chunks],
            options=options,
            generator=generator,
            return_trajectory=return_trajectory,
        )


def _combine(
    source: AudioSource, duration: float, parts: list[Transcript], segmented: bool
) -> FileTranscript:
    """One input's result from the transcripts of its chunks (overlapping windows, merged)
    or segments (cut at pauses, joined), in order."""
    predicted = [p.language for p in parts if p.language is not None]
    language = source.language or (Counter(predicted).most_common(1)[0][0] if predicted else None)
    texts = [p.text for p in parts]
    if segmented:
        text = join_segment_texts(texts, language)
    else:
        text = merge_chunk_texts(texts, unit_for(language))
    trajectory = None if parts[0].trajectory is None else [p.trajectory for p in parts]
    return FileTranscript(source.name, text, language, duration, len(parts), None, trajectory)


def transcribe_sources(
    model: Whisfusion,
    sources: Sequence[AudioSource],
    options: DecodeOptions | None = None,
    *,
    return_trajectory: bool = False,
    progress: bool = False,
    times: StageTimes | None = None,
) -> list[FileTranscript]:
    """Transcribe every source (module docstring); one result per source, in order.

    Args:
        options: decoding settings, `batch_size` included (default: the model's config).
        progress: show a progress bar (one tick per input).
        times: accumulates the wall seconds of each stage, when given.
    """
    options = options or DecodeOptions.from_config(model.cfg.decode)
    model.check_options(options)
    times = times if times is not None else StageTimes()
    check_languages([s.language for s in sources], model.tokenizer.languages)
    generator = torch.Generator().manual_seed(options.seed)
    order = sorted(range(len(sources)), key=lambda i: -sources[i].duration)
    results: list[FileTranscript | None] = [None] * len(sources)
    # per input being decoded: its duration, the chunk count, and the chunk transcripts so far
    pending: dict[int, tuple[float, int, list[Transcript]]] = {}
    bar = tqdm(total=len(sources), unit="file", desc="transcribe", disable=not progress)

    def chunked() -> Iterator[list[_Chunk]]:
        for i in order:
            source = sources[i]
            try:
                with times.stage("load", torch.device("cpu")):
                    audio = _load(source)
            except LOAD_ERRORS as err:
                log.warning("cannot transcribe %s: %s", source.name, err)
                results[i] = FileTranscript(source.name, "", source.language, error=str(err))
                bar.update()
                continue
            if options.segment_s:
                spans = plan_segments(audio, options.segment_s)
            else:
                spans = plan_chunks(audio.numel())
            pending[i] = (audio.numel() / SAMPLE_RATE, len(spans), [])
            yield [_Chunk(i, audio[start:end], source.language) for start, end in spans]

    with bar:
        for batch in pack_batches(chunked(), options.batch_size):
            transcripts = _decode_batch(model, batch, options, generator, return_trajectory, times)
            for chunk, transcript in zip(batch, transcripts, strict=True):
                duration, count, parts = pending[chunk.source]
                parts.append(transcript)
                if len(parts) == count:
                    del pending[chunk.source]
                    results[chunk.source] = _combine(
                        sources[chunk.source], duration, parts, segmented=bool(options.segment_s)
                    )
                    bar.update()
    return results


def transcribe_audio(
    model: Whisfusion,
    audio: AudioInput | Sequence[AudioInput],
    language: str | Sequence[str | None] | None = None,
    options: DecodeOptions | None = None,
    *,
    return_trajectory: bool = False,
    progress: bool = False,
    **overrides,
) -> list[FileTranscript]:
    """Transcribe paths and / or 1-D 16 kHz waveforms; one result per input, in order
    (`Whisfusion.transcribe`). Long audio is chunked and merged; unreadable inputs come back
    with `error` set.

    Args:
        audio: a path, a waveform, or a list mixing them (any format and rate soundfile reads).
        language: one code for all inputs, one per input, or None to let the model predict it.
        options: decoding settings (default: the model's config).
        return_trajectory: keep each chunk's canvas after every denoising step.
        progress: show a progress bar.
        overrides: `DecodeOptions` keys replacing those of `options` (steps=8, temperature=0.5,
            ...); None values are ignored.
    """
    options = options or DecodeOptions.from_config(model.cfg.decode)
    return transcribe_sources(
        model,
        sources_from_inputs(audio, language),
        options.replace(**overrides),
        return_trajectory=return_trajectory,
        progress=progress,
    )
