"""Timing loops: the encoder, each autoregressive decoder, each diffusion decoder setting.

Every decoder reads the same encoder output: the first benchmark clip under the 30 s window,
repeated over the batch. Each group of timings (a decoder at one batch size, and for PDD one K) is
preceded by `profile.warmup` untimed runs of its cheapest setting, and each measurement by
`profile.shape_warmup` untimed runs of its own shape (GPU kernels are chosen per shape).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial

import torch

from bench.ar import build_whisper, greedy_tokens
from bench.encoder import batch_of, with_window
from bench.machine import load_average
from bench.pdd import build_diffusion_decoder, canvas_for_tokens, pdd_tokens
from bench.profiles import Profile
from bench.timing import time_call
from whisfusion.audio import SAMPLE_RATE
from whisfusion.encoder import FrozenWhisperEncoder
from whisfusion.precision import decoding_precision

log = logging.getLogger(__name__)


def autocast(profile: Profile, device: torch.device):
    """The profile's precision as decoding applies it (autocast, TF32 on CUDA)."""
    return decoding_precision(profile.autocast or "float32", device)


def measure(profile: Profile, device: torch.device, fn: Callable[[], object], **fields) -> dict:
    """Time `fn` as the profile says; one measurement row: `fields` plus the timings."""
    with autocast(profile, device), torch.inference_mode():
        timing = time_call(
            fn,
            device,
            warmup=profile.shape_warmup,
            repeats=profile.repeats,
            max_time_s=profile.max_time_s,
        )
    log.info("%s: %.4f s", " ".join(f"{k}={v}" for k, v in fields.items()), timing.median_s)
    return {
        **fields,
        "median_s": timing.median_s,
        "samples_s": list(timing.samples_s),
        # other work on the machine shows here (this process adds about its thread count)
        "load_1min": load_average()[0],
    }


def warm_up(profile: Profile, device: torch.device, fn: Callable[[], object]) -> object:
    """Run `fn` `profile.warmup` times untimed; return its last output."""
    with autocast(profile, device), torch.inference_mode():
        for _ in range(profile.warmup):
            out = fn()
    return out


def time_encoder(
    profile: Profile, encoder: FrozenWhisperEncoder, clip: torch.Tensor, device: torch.device
) -> list[dict]:
    """The encoder alone (log-mel included) on one clip: 30 s window and the clip's trim window.

    Warmed up on the clip alone; each batch size then gets `profile.shape_warmup` runs of its own.
    """
    rows = []
    for window in ("full", "trim"):
        windowed = with_window(encoder, window)
        features, _ = warm_up(profile, device, partial(windowed.encode, *batch_of(clip, 1, device)))
        for batch in profile.batches:
            rows.append(
                measure(
                    profile,
                    device,
                    partial(windowed.encode, *batch_of(clip, batch, device)),
                    family="encoder",
                    decoder=encoder_name(profile),
                    window=window,
                    frames=int(features.shape[1]),
                    audio_s=round(clip.numel() / SAMPLE_RATE, 3),
                    batch=batch,
                )
            )
    return rows


def encoder_name(profile: Profile) -> str:
    return f"{profile.encoder.name} encoder"


def time_autoregressive(
    profile: Profile, features: torch.Tensor, device: torch.device
) -> list[dict]:
    """Each AR decoder, each batch size, each transcript length N."""
    rows = []
    for shape in profile.ar:
        model = build_whisper(shape, device)
        for batch in profile.batches:
            feats = features.expand(batch, -1, -1).contiguous()
            warm_up(profile, device, partial(greedy_tokens, model, feats, min(profile.lengths)))
            for n in profile.lengths:
                rows.append(
                    measure(
                        profile,
                        device,
                        partial(greedy_tokens, model, feats, n),
                        family="ar",
                        decoder=shape.name,
                        batch=batch,
                        n_tokens=n,
                    )
                )
        del model  # free its memory before the next shape is built
    return rows


def time_diffusion(
    profile: Profile, features: torch.Tensor, valid: torch.Tensor, device: torch.device
) -> list[dict]:
    """Each diffusion decoder at each of its (batch, T, K) settings and each length N."""
    rows = []
    generator = torch.Generator(device=device).manual_seed(0)
    shortest = canvas_for_tokens(min(profile.lengths))
    for run in profile.pdd:
        decoder = build_diffusion_decoder(run.shape, features.shape[-1], device)
        groups: dict[tuple[int, int], list[int]] = {}
        for batch, steps, k in sorted(run.settings):
            groups.setdefault((batch, k), []).append(steps)
        for (batch, k), all_steps in sorted(groups.items()):
            feats = features.expand(batch, -1, -1).contiguous()
            mask = valid.expand(batch, -1).contiguous()
            decode = partial(
                pdd_tokens,
                decoder,
                feats,
                mask,
                generator=generator,
                candidates=k,
                kv_refresh=profile.pdd_kv_refresh,
            )
            warm_up(profile, device, partial(decode, shortest, min(all_steps)))
            for steps in all_steps:
                for n in profile.lengths:
                    length = canvas_for_tokens(n)
                    rows.append(
                        measure(
                            profile,
                            device,
                            partial(decode, length, steps),
                            family="pdd",
                            decoder=run.shape.name,
                            batch=batch,
                            n_tokens=n,
                            canvas=length,
                            steps=steps,
                            candidates=k,
                        )
                    )
        del decoder  # free its memory before the next shape is built
    return rows


def shared_features(
    encoder: FrozenWhisperEncoder, clip: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 30 s window encoder output of one clip: features (1, 1500, E), valid (1, 1500)."""
    audio, lengths = batch_of(clip, 1, device)
    return with_window(encoder, "full").encode(audio, lengths)


def clip_seconds(clips: Sequence[torch.Tensor]) -> list[float]:
    return [round(c.numel() / SAMPLE_RATE, 3) for c in clips]
