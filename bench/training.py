"""Training throughput: one optimizer step split into its parts, and the data workers' rate.

    python -m bench.training                 # CPU profile (demo shapes), a few minutes
    python -m bench.training --profile gpu   # the paper's shapes, bf16 (needs a GPU)

Each training configuration runs the step `WhisfusionModule.training_step` runs, on random
weights of the profile's shapes (random weights cost what trained ones cost) and synthetic
audio, timed part by part with the device synchronized between parts:
    data       the batch (audio, canvases) copied to the device
    encoder    log-mel + frozen encoder (no gradient)
    decoder    masking, decoder forward, loss, backward
    optimizer  gradient clipping, AdamW step, zero_grad
Each configuration is timed three ways, the first the baseline of the ratios: the 30 s window
read whole by cross-attention ("full"), the 30 s window cut to the batch's audio ("full, cut",
what training does), and the encoder's own trimmed window ("trim").

The data side: per DataLoader worker (one thread), a 16 kHz FLAC decode (what a training worker
does per sample), plus the log-mel on the CPU, and a 44.1 kHz source decoded, resampled and
turned into a log-mel (what data preparation does per sample), in samples and hours of audio
per second. Divided into a profile's samples/s per device, it gives the workers one device
needs.

Outputs: bench/out/training-<profile>.json and a markdown summary training-<profile>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from bench.audio import synthetic_clip
from bench.encoder import with_window
from bench.machine import describe_machine, load_average
from bench.pdd import EOS_ID, canvas_for_tokens
from bench.profiles import (
    CONFIGS,
    WHISPER_BASE_ENCODER,
    WHISPER_LARGE_V3_ENCODER,
    EncoderShape,
)
from bench.timing import synchronize
from whisfusion.audio import log_mel_spectrogram
from whisfusion.config import OptimConfig, RunConfig, load_config
from whisfusion.data.audio_io import encode_flac, read_audio, to_mono_16k
from whisfusion.decoders import diffusion_decoder
from whisfusion.encoder import FrozenWhisperEncoder
from whisfusion.encoder.windows import trim_to_audio
from whisfusion.optim import build_optimizer
from whisfusion.schedule import MaskSchedule, diffusion_loss

log = logging.getLogger(__name__)

OUT = Path(__file__).resolve().parent / "out"
# Transcript tokens per second of speech the canvases are sized for (about r_max of the corpora
# the configs train on), so a clip's canvas is what the canvas rule would give it.
TOKENS_PER_SECOND = 5.0
# Step variants: (name, encoder window, cut cross-attention to the audio). The first is the
# baseline of every ratio.
VARIANTS = (("full", "full", False), ("full, cut", "full", True), ("trim", "trim", False))
# Source sample rate of the data-preparation column (a typical corpus recording).
SOURCE_RATE = 44_100


@dataclass(frozen=True)
class TrainProfile:
    # Names the outputs.
    name: str
    # Device every model runs on.
    device: str
    # Config whose decoder, schedule and vocabulary are timed (configs/<config>.yaml).
    config: str
    # Encoder shape (random weights); its output block comes from the config.
    encoder: EncoderShape
    # bf16 autocast for the decoder (the encoder sets its own precision).
    bf16: bool
    # Per-device batch sizes timed.
    batches: tuple[int, ...]
    # Seconds of audio per clip (every clip of a batch as long: the padded size).
    clip_s: float
    # Untimed steps before the timed ones, then timed steps (median reported).
    warmup: int
    steps: int
    # Seconds each data-side pipeline is run for.
    data_s: float = 2.0


PROFILES = {
    "cpu": TrainProfile("cpu", "cpu", "demo", WHISPER_BASE_ENCODER, False, (4, 8), 4.0, 1, 2),
    "gpu": TrainProfile(
        "gpu", "cuda", "large", WHISPER_LARGE_V3_ENCODER, True, (16, 32, 64), 10.0, 2, 5
    ),
    # test shapes: seconds on a CPU
    "tiny": TrainProfile(
        "tiny", "cpu", "tiny", EncoderShape("tiny", 80, 64, 2, 2), False, (2,), 2.0, 0, 1, 0.1
    ),
}


def run_config(profile: TrainProfile) -> RunConfig:
    return load_config(CONFIGS / f"{profile.config}.yaml", ["model.canvas.r_max=8"])


def build_encoder(profile: TrainProfile, cfg: RunConfig, device: torch.device):
    s = profile.encoder
    encoder = FrozenWhisperEncoder.random(
        s.n_mels, s.width, s.layers, s.heads, output_layer=cfg.model.encoder.output_layer
    ).to(device)
    if device.type == "cuda":
        encoder.to(torch.bfloat16)  # as WhisfusionModule.on_fit_start stores it
    return encoder


def make_batch(profile: TrainProfile, batch: int, vocab: int) -> dict[str, torch.Tensor]:
    """Host tensors of one batch: audio (B, S), lengths (B,), tokens and canvas_valid (B, L)."""
    clip = synthetic_clip(profile.clip_s)
    length = canvas_for_tokens(int(profile.clip_s * TOKENS_PER_SECOND))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(EOS_ID + 1, vocab, (batch, length), generator=g)
    return {
        "audio": clip.expand(batch, -1).contiguous(),
        "audio_lens": torch.full((batch,), clip.numel(), dtype=torch.long),
        "tokens": tokens,
        "canvas_valid": torch.ones(batch, length, dtype=torch.bool),
    }


class Step:
    """One optimizer step of the training step's work, each part timed."""

    def __init__(self, encoder, decoder, cfg: RunConfig, device: torch.device, bf16: bool):
        self.encoder, self.decoder, self.device = encoder, decoder, device
        self.schedule = MaskSchedule(cfg.model.schedule)
        self.optimizer, _ = build_optimizer(decoder, OptimConfig(), 1000)
        self.grad_clip = cfg.optim.grad_clip
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )
        self.generator = torch.Generator(device).manual_seed(0)

    def _timed(self, fn: Callable[[], object]) -> tuple[object, float]:
        synchronize(self.device)
        start = time.perf_counter()
        out = fn()
        synchronize(self.device)
        return out, time.perf_counter() - start

    def _loss(self, feats, valid, batch) -> torch.Tensor:
        with self.autocast:
            cache = self.decoder.cross_cache(feats, valid)
            tokens, canvas_valid = batch["tokens"], batch["canvas_valid"]
            corr = self.schedule.corrupt(
                tokens, canvas_valid, self.decoder.mask_id, 0, self.generator
            )
            logits = self.decoder(corr.x_t, cache, canvas_valid, corr.weights > 0)
            loss = diffusion_loss(logits, tokens, corr.weights)
            if self.decoder.prior is not None:
                aux = self.decoder.prior.losses(cache.prior, tokens, canvas_valid, EOS_ID)
                loss = loss + sum(weight * value for value, weight in aux.values())
        return loss

    def _optimize(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, host_batch: dict, cut: bool) -> dict[str, float]:
        dev = self.device
        batch, data_s = self._timed(
            lambda: {k: v.to(dev, non_blocking=True) for k, v in host_batch.items()}
        )
        (feats, valid), enc_s = self._timed(
            lambda: self.encoder.encode(batch["audio"], batch["audio_lens"])
        )
        if cut:
            feats, valid = trim_to_audio(feats, valid, batch["audio"].shape[1])
        _, dec_s = self._timed(lambda: self._loss(feats, valid, batch).backward())
        _, opt_s = self._timed(self._optimize)
        return {
            "data_s": data_s,
            "encoder_s": enc_s,
            "decoder_s": dec_s,
            "optimizer_s": opt_s,
            "frames": feats.shape[1],
        }


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # the process's peak resident size so far (Linux reports KiB): an upper bound per row
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(profile: TrainProfile) -> list[dict]:
    """One row per (batch, variant): median part times, samples/s, hours/s, peak memory."""
    device = torch.device(profile.device)
    cfg = run_config(profile)
    vocab = cfg.model.tokenizer.vocab_size
    encoder = build_encoder(profile, cfg, device)
    rows = []
    for batch_size in profile.batches:
        host = make_batch(profile, batch_size, vocab)
        for name, window, cut in VARIANTS:
            torch.manual_seed(0)
            with torch.device(device):
                decoder = diffusion_decoder(cfg.model.decoder, vocab, profile.encoder.width)
            step = Step(with_window(encoder, window), decoder, cfg, device, profile.bf16)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(profile.warmup):
                step(host, cut)
            parts = [step(host, cut) for _ in range(profile.steps)]
            median = {k: float(np.median([p[k] for p in parts])) for k in parts[0]}
            total = sum(median[k] for k in ("data_s", "encoder_s", "decoder_s", "optimizer_s"))
            rows.append(
                {
                    "batch": batch_size,
                    "variant": name,
                    **median,
                    "step_s": total,
                    "samples_per_s": batch_size / total,
                    "audio_hours_per_s": batch_size * profile.clip_s / 3600 / total,
                    "peak_memory_mb": _peak_memory_mb(device),
                }
            )
            log.info("batch %d %s: %.3f s/step", batch_size, name, total)
            del step, decoder
    return rows


def _rate(fn: Callable[[], object], min_s: float = 1.0) -> float:
    """Calls per second of `fn`, run for about `min_s` seconds (at least 3 calls)."""
    fn()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < min_s:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def time_data_worker(clip_s: float, n_mels: int, min_s: float = 1.0) -> list[dict]:
    """Samples/s of one single-threaded worker for each data-side pipeline."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        wave = synthetic_clip(clip_s).numpy()
        flac16 = encode_flac(wave)
        n = int(round(clip_s * SOURCE_RATE))
        source = encode_flac_at(
            np.interp(np.linspace(0, wave.size - 1, n), np.arange(wave.size), wave)
        )

        def decode():
            return read_audio(flac16)[0]

        def decode_mel():
            return log_mel_spectrogram(torch.from_numpy(decode()[:, 0]), n_mels)

        def prepare():
            samples, rate = read_audio(source)
            return log_mel_spectrogram(torch.from_numpy(to_mono_16k(samples, rate)), n_mels)

        pipelines = (
            ("flac 16 kHz decode (training worker)", decode),
            ("flac decode + log-mel", decode_mel),
            (f"flac {SOURCE_RATE} Hz decode + resample + log-mel (data prep)", prepare),
        )
        rows = []
        for name, fn in pipelines:
            rate = _rate(fn, min_s)
            rows.append(
                {
                    "pipeline": name,
                    "samples_per_s": rate,
                    "audio_hours_per_s": rate * clip_s / 3600,
                }
            )
        return rows
    finally:
        torch.set_num_threads(threads)


def encode_flac_at(wave: np.ndarray) -> bytes:
    """`wave` (float, at SOURCE_RATE) as FLAC bytes at SOURCE_RATE."""
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), SOURCE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def summary(result: dict) -> str:
    """Markdown: machine, settings, the step table with ratios, the data-worker table."""
    p, m = result["profile"], result["machine"]
    device = m["gpu"] or m["device"]
    lines = [
        f"# Training throughput, profile `{p['name']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {device}; torch {m['versions']['torch']} "
        f"with {m['torch_threads']} threads; load average {m['load_average_at_start']} at the "
        f"start, {m['load_average_at_end']} at the end.",
        f"Shapes: configs/{p['config']}.yaml decoder and vocabulary, {p['encoder']['name']} "
        f"encoder shape (random weights), {'bf16 autocast' if p['bf16'] else 'float32'}; "
        f"{p['clip_s']} s clips; median of {p['steps']} steps after {p['warmup']} warm-up.",
        "",
        "| batch | variant | frames | data ms | encoder ms | decoder fwd+bwd ms | optimizer ms "
        "| step ms | samples/s | audio h/s | x baseline | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["batch"]: r["samples_per_s"] for r in result["steps"] if r["variant"] == "full"}
    for r in result["steps"]:
        ms = [f"{r[k] * 1e3:.1f}" for k in ("data_s", "encoder_s", "decoder_s", "optimizer_s")]
        lines.append(
            f"| {r['batch']} | {r['variant']} | {r['frames']:.0f} | {' | '.join(ms)} "
            f"| {r['step_s'] * 1e3:.1f} | {r['samples_per_s']:.2f} "
            f"| {r['audio_hours_per_s']:.5f} | {r['samples_per_s'] / base[r['batch']]:.2f} "
            f"| {r['peak_memory_mb']:.0f} |"
        )
    best = max(r["samples_per_s"] for r in result["steps"])
    lines += [
        "",
        "Data side, one worker (one thread):",
        "",
        "| pipeline | samples/s | audio h/s | workers per device at the best step rate |",
        "|---|---|---|---|",
    ]
    for r in result["data"]:
        lines.append(
            f"| {r['pipeline']} | {r['samples_per_s']:.1f} | {r['audio_hours_per_s']:.4f} "
            f"| {best / r['samples_per_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def run(profile: TrainProfile, out: Path) -> dict:
    device = torch.device(profile.device)
    machine = describe_machine(device)
    cfg = run_config(profile)
    result = {
        "profile": {**dataclasses.asdict(profile), "n_mels": profile.encoder.n_mels},
        "machine": machine,
        "steps": time_steps(profile),
        "data": time_data_worker(profile.clip_s, profile.encoder.n_mels, profile.data_s),
        "decoder": dataclasses.asdict(cfg.model.decoder),
    }
    machine["load_average_at_end"] = load_average()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"training-{profile.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"training-{profile.name}.md").write_text(summary(result))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.training", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--out", type=Path, default=OUT, help="output directory")
    parser.add_argument("--batches", help="comma-separated per-device batch sizes to time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    profile = PROFILES[args.profile]
    if args.batches:
        profile = dataclasses.replace(
            profile, batches=tuple(int(b) for b in args.batches.split(","))
        )
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("profile gpu needs a CUDA device")
    result = run(profile, args.out)
    print(summary(result))


if __name__ == "__main__":
    main()
