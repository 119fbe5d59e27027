"""One benchmark run: time everything a profile lists, then write JSON, markdown, PNG, results."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from bench import reference
from bench.audio import speech_clips
from bench.ct2 import time_ct2_decoders
from bench.encoder import build_encoder, is_real
from bench.machine import describe_machine, load_average
from bench.profiles import Profile
from bench.report import render_markdown, update_results
from bench.runner import (
    clip_seconds,
    shared_features,
    time_autoregressive,
    time_diffusion,
    time_encoder,
)
from bench.summary import comparisons, recommend
from whisfusion.config import DecodeConfig

log = logging.getLogger(__name__)

# 1-minute load average at the start above which the machine counts as busy with other work.
BUSY_LOAD = 0.5


def _reference_unavailable(profile: Profile, encoder, with_reference: bool) -> str | None:
    """Why CTranslate2 / faster-whisper are not timed, or None when they are."""
    if not with_reference:
        return "skipped (--no-reference)"
    if profile.device != "cpu":
        return "faster-whisper is the CPU reference; the GPU profile skips it"
    if not is_real(encoder):
        return "the real Whisper-base weights are not installed"
    return reference.unavailable_reason()


def _settings(
    profile: Profile, threads: int, encoder, features: torch.Tensor, clips, audio_source: str
) -> dict:
    """How the run was set up: grids, repeats, precision, the shared encoder output."""
    return {
        "threads": threads,
        "lengths": list(profile.lengths),
        "batches": list(profile.batches),
        "warmup": profile.warmup,
        "shape_warmup": profile.shape_warmup,
        "repeats": profile.repeats,
        "max_time_s": profile.max_time_s,
        "pdd_kv_refresh": profile.pdd_kv_refresh,
        "precision": f"{profile.autocast or 'float32'}"
        + (" autocast" if profile.autocast else "")
        + ", SDPA attention",
        "encoder": profile.encoder.name,
        "encoder_source": encoder.source,
        "encoder_real_weights": is_real(encoder),
        "features_frames": int(features.shape[1]),
        "clip_s": clip_seconds(clips),
        "audio": audio_source,
        "pdd": [
            {
                "name": run.shape.name,
                "decoder": vars(run.shape.decoder),
                "vocab": run.shape.vocab,
                "settings (batch, T, K)": [list(x) for x in run.settings],
            }
            for run in profile.pdd
        ],
        "ar": [vars(s) for s in profile.ar],
    }


def write_outputs(result: dict, out_dir: Path | None, results_path: Path | None) -> None:
    """decoding.json / .md / .png under `out_dir`; this profile's section of `results_path`."""
    markdown = render_markdown(result)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(result, indent=1) + "\n"
        (out_dir / "decoding.json").write_text(text, encoding="utf-8")
        (out_dir / "decoding.md").write_text(markdown, encoding="utf-8")
        rec = result["summary"]["recommendation"]
        steps = rec["steps"] if rec else DecodeConfig().steps
        try:
            # matplotlib is a plotting extra: GPU images often lack it, and the numbers matter
            from bench.plot import plot_times
        except ImportError as err:
            log.warning("no decoding.png: %s (pip install matplotlib)", err)
        else:
            plot_times(result["measurements"], steps, out_dir / "decoding.png")
    if results_path is not None:
        update_results(results_path, result["profile"], markdown)


def run_e2e_benchmark(
    profile: Profile, threads: int, out_dir: Path | None, results_path: Path | None
) -> dict:
    """The end-to-end comparison of `profile` (bench.e2e); writes e2e.json / e2e.md under
    `out_dir` and the `<profile>-e2e` section of `results_path`; returns the result."""
    from bench.e2e import run_e2e
    from bench.report import render_e2e_markdown

    if profile.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available here")
    torch.set_num_threads(threads)
    machine = describe_machine(torch.device(profile.device))
    e2e = run_e2e(profile, threads)
    machine["load_average_at_end"] = load_average()
    machine["under_load"] = machine["load_average_at_start"][0] >= BUSY_LOAD
    result = {
        "profile": f"{profile.name}-e2e",
        "date": time.strftime("%Y-%m-%d"),
        "threads": threads,
        "machine": machine,
        "e2e": e2e,
    }
    markdown = render_e2e_markdown(result)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "e2e.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        (out_dir / "e2e.md").write_text(markdown, encoding="utf-8")
    if results_path is not None:
        update_results(results_path, result["profile"], markdown)
    return result


def run_benchmark(
    profile: Profile,
    threads: int,
    out_dir: Path | None,
    results_path: Path | None,
    with_reference: bool = True,
) -> dict:
    """Time everything in `profile`; write the outputs; return the result dict."""
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available here")
    torch.set_num_threads(threads)
    device = torch.device(profile.device)
    machine = describe_machine(device)
    started = time.perf_counter()

    clips, audio_source = speech_clips()
    encoder = build_encoder(profile.encoder, profile.real_weights)
    encoder.to(device)
    rows = time_encoder(profile, encoder, clips[0], device)
    with torch.inference_mode():
        features, valid = shared_features(encoder, clips[0], device)
    rows += time_autoregressive(profile, features, device)
    reason = _reference_unavailable(profile, encoder, with_reference)
    model_dir = Path(encoder.source)
    if reason is None:
        rows += time_ct2_decoders(profile, model_dir, features, threads)
    rows += time_diffusion(profile, features, valid, device)
    ref = {"rows": None, "reason": reason}
    if reason is None:
        ref["rows"] = reference.time_faster_whisper(
            model_dir, clips, threads, profile.warmup, profile.repeats, profile.max_time_s
        )

    machine["load_average_at_end"] = load_average()
    machine["under_load"] = machine["load_average_at_start"][0] >= BUSY_LOAD
    comps = comparisons(rows)
    result = {
        "profile": profile.name,
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine,
        "settings": _settings(profile, threads, encoder, features, clips, audio_source),
        "measurements": rows,
        "reference": ref,
        "summary": {
            "comparisons": comps,
            "recommendation": recommend(
                comps, profile.recommend_for, DecodeConfig().steps, [s.name for s in profile.ar]
            ),
        },
    }
    write_outputs(result, out_dir, results_path)
    return result
