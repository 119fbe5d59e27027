"""`whisfusion evaluate --checkpoint C --data SHARDS_OR_MANIFEST... [--output-dir D]`

Transcribes a validation set, scores it (corpus WER / CER per language and group) and measures
its speed. `--data` takes, any number of times mixed:
    a directory with `index.json` (as data_prep writes it): the shards of `--split`
    a shard file, glob or brace pattern: `data/shards/valid/en-{000000..000003}.tar`
    a JSONL manifest (`.jsonl`, lines {id, audio, duration, text, lang}); relative audio paths
        are taken relative to the manifest's directory
Writes to the output directory:
    results.json  scores, speed, decode settings, machine
    results.md    the same as Markdown tables
    ref.jsonl, hyp.jsonl  {id, text, lang} lines: `whisfusion score ref.jsonl hyp.jsonl`
        gives the same scores. An utterance whose audio cannot be decoded has an empty
        hypothesis (with its `error`), scored as all deletions.
Speed: RTFx = seconds of audio / wall seconds of the whole timed pipeline (decoding the audio
files or shard FLAC, log-mel, encoder, PDD, choosing among candidates, detokenize, in
`decode.dtype`), measured after one untimed warm-up
batch; the shards' bytes are read from disk before the clock starts. The encoder-only seconds
(log-mel + encoder) are the floor any decoder adds to.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from braceexpand import braceexpand

from whisfusion.audio import load_audio
from whisfusion.commands.transcribe import add_decode_options, decode_settings, load_model
from whisfusion.data.manifest import read_manifest
from whisfusion.data.shards import AUDIO_KEY, META_KEY, decode_sample, iter_shard, read_index
from whisfusion.data.stats import BadSample
from whisfusion.options import DecodeOptions
from whisfusion.precision import resolve_dtype
from whisfusion.quantize import uses_int8
from whisfusion.scoring import Report, cer_line, score_in_both_units
from whisfusion.scoring.normalizers import base_language
from whisfusion.transcribe import (
    AudioSource,
    FileTranscript,
    StageTimes,
    check_languages,
    transcribe_sources,
)

# Ids of failed utterances listed in results.json.
_SHOWN_FAILURES = 20


@dataclass(frozen=True)
class EvalItem:
    id: str
    # Reference language: decides normalization and metric, and is given to the decoder
    # unless the language is predicted.
    lang: str
    # Reference transcript.
    text: str
    source: AudioSource


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="transcribe a validation set, score it and measure RTFx",
        description="Evaluate a checkpoint. Example:\n  whisfusion evaluate --checkpoint "
        "runs/demo/checkpoints/last.ckpt --data data/demo --output-dir runs/demo/eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_decode_options(p)
    add_data_options(p)
    lang = p.add_mutually_exclusive_group()
    lang.add_argument(
        "--language-given",
        dest="predict_language",
        action="store_false",
        help="put each reference's language on the canvas (default)",
    )
    lang.add_argument(
        "--predict-language",
        dest="predict_language",
        action="store_true",
        help="let the decoder predict the language (also reports its accuracy)",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        help="where results go (default: eval-<checkpoint name> beside the checkpoint)",
    )
    p.set_defaults(func=run, predict_language=False)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """`--data` and `--split`: the evaluation set (see `read_eval_set`)."""
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="SHARDS_OR_MANIFEST",
        help="index directory, shard pattern or JSONL manifest (several allowed)",
    )
    p.add_argument(
        "--split",
        default="valid",
        help="split of an index directory: valid (default), test, human, long, train",
    )


# ---------------------------------------------------------------------------- reading


def _shard_audio(raw: dict[str, Any]) -> torch.Tensor:
    try:
        return torch.from_numpy(decode_sample(raw)[1])
    except BadSample as bad:
        raise ValueError(f"{bad.reason}: {bad.detail}") from None


def shard_paths(spec: str, split: str) -> list[str]:
    """Shard files of an index directory's split, or of a path / glob / brace pattern."""
    if Path(spec).is_dir():
        splits = read_index(spec)["splits"]
        if split not in splits:
            raise ValueError(
                f"{Path(spec) / 'index.json'} has no split '{split}' ({', '.join(splits)})"
            )
        return [str(Path(spec) / entry["path"]) for entry in splits[split]["shards"]]
    paths = []
    for pattern in braceexpand(spec):
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        missing = [m for m in matched if not Path(m).is_file()]
        if not matched or missing:
            origin = "" if pattern == spec else f" (from '{spec}')"
            raise ValueError(f"no shard file {missing[0] if missing else pattern}{origin}")
        paths += matched
    return paths


def read_shards(paths: list[str]) -> Iterator[tuple[str, str, str, float, Any]]:
    """(id, lang, text, duration, load) of every sample; the audio is decoded only by `load`.

    Raises:
        ValueError: an unreadable shard, or a sample without readable metadata (it has no
            reference, so the set could not be scored as a whole).
    """

    def fail(path: str, err: Exception) -> None:
        raise ValueError(f"{path}: unreadable shard ({err})")

    for path in paths:
        for raw in iter_shard(path, fail):
            where = f"{path} key {raw.get('__key__', '?')}"
            if META_KEY not in raw or AUDIO_KEY not in raw:
                raise ValueError(f"{where}: needs a .{META_KEY} and a .{AUDIO_KEY} member")
            try:
                meta = json.loads(raw[META_KEY])
                utt = (str(meta["id"]), str(meta["lang"]), str(meta["text"]))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{where}: metadata unreadable ({err!r})") from None
            yield *utt, float(meta.get("duration", 0.0)), partial(_shard_audio, raw)


def read_manifest_items(path: str) -> Iterator[tuple[str, str, str, float, Any]]:
    """(id, lang, text, duration, load) of every manifest line."""
    base = Path(path).parent
    for utt in read_manifest(path):
        audio = Path(utt.audio) if Path(utt.audio).is_absolute() else base / utt.audio
        yield utt.id, utt.lang, utt.text, utt.duration, partial(load_audio, audio)


def read_eval_set(specs: list[str], split: str, predict_language: bool) -> list[EvalItem]:
    """The utterances of every `--data` spec, in order.

    Raises:
        ValueError: unreadable data, or an id used twice.
    """
    items: list[EvalItem] = []
    where: dict[str, str] = {}
    for spec in specs:
        rows = (
            read_manifest_items(spec)
            if spec.endswith(".jsonl")
            else read_shards(shard_paths(spec, split))
        )
        for utt_id, lang, text, duration, load in rows:
            if utt_id in where:
                raise ValueError(
                    f"utterance id '{utt_id}' occurs twice ({where[utt_id]} and {spec})"
                )
            where[utt_id] = spec
            source = AudioSource(utt_id, duration, load, None if predict_language else lang)
            items.append(EvalItem(utt_id, lang, text, source))
    return items


# ---------------------------------------------------------------------------- running


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def timed_transcription(
    model, items: list[EvalItem], decode: DecodeOptions, progress: bool
) -> tuple[list[FileTranscript], dict[str, Any]]:
    """Warm up on the first batch (the longest utterances), then transcribe everything timed."""
    sources = [item.source for item in items]
    warmup = sorted(sources, key=lambda s: -s.duration)[: decode.batch_size]
    transcribe_sources(model, warmup, decode)
    times = StageTimes()
    start = time.perf_counter()
    results = transcribe_sources(model, sources, decode, progress=progress, times=times)
    wall = time.perf_counter() - start
    audio_s = sum(r.duration for r in results)
    encoder_s = times.seconds.get("encode", 0.0)
    speed = {
        "audio_seconds": audio_s,
        "wall_seconds": wall,
        "rtfx": audio_s / wall,
        "encoder_seconds": encoder_s,
        "encoder_rtfx": audio_s / encoder_s if encoder_s > 0 else None,
        "stage_seconds": times.seconds,
        "warmup_utterances": len(warmup),
        "dtype": str(resolve_dtype(decode.dtype, model.device)).removeprefix("torch.")
        + (", int8 decoder weights" if uses_int8(decode.int8, model.device) else ""),
    }
    return results, speed


def language_accuracy(items: list[EvalItem], results: list[FileTranscript]) -> float | None:
    """Share of transcribed utterances whose predicted language is the reference's."""
    pairs = [(i.lang, r.language) for i, r in zip(items, results, strict=True) if r.ok]
    if not pairs:
        return None
    hits = sum(hyp is not None and base_language(ref) == base_language(hyp) for ref, hyp in pairs)
    return hits / len(pairs)


# ---------------------------------------------------------------------------- writing


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )


def to_markdown(results: dict[str, Any], report: Report, char_report: Report) -> str:
    speed, decode = results["speed"], results["decode"]
    data = (
        f"Data: {', '.join(results['data'])}: {results['utterances']} utterances, "
        f"{speed['audio_seconds'] / 3600:.3f} h; languages {results['language_mode']}"
    )
    if results["language_accuracy"] is not None:
        data += f" (accuracy {100 * results['language_accuracy']:.1f} %)"
    if results["failed"]:
        data += f"; {results['failed']} utterances could not be decoded (scored as empty)"
    decoding = (
        f"Decoding: {decode['steps']} steps, {decode['candidates']} candidates, "
        f"{decode['remasking']} remasking, {decode['select']} selection, "
        f"batch {decode['batch_size']}"
        if decode["method"] == "pdd"
        else f"Decoding: greedy CTC reading of the alignment head, batch {decode['batch_size']}"
    )
    encoder_rtfx = speed["encoder_rtfx"]
    lines = [
        f"# Evaluation of {results['checkpoint']}",
        "",
        data,
        "",
        decoding,
        "",
        report.to_markdown(),
        "",
        cer_line(char_report),
        "",
        "| speed | value |",
        "|---|---:|",
        f"| RTFx (whole pipeline) | {speed['rtfx']:.1f} |",
        f"| encoder-only RTFx | {'n/a' if encoder_rtfx is None else f'{encoder_rtfx:.1f}'} |",
        f"| wall seconds | {speed['wall_seconds']:.2f} |",
        f"| encoder seconds | {speed['encoder_seconds']:.2f} |",
        *(f"| {stage} seconds | {s:.2f} |" for stage, s in speed["stage_seconds"].items()),
        f"| decoding precision | {speed['dtype']} |",
        f"| audio seconds | {speed['audio_seconds']:.1f} |",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in results["machine"].items()),
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        items = read_eval_set(args.data, args.split, args.predict_language)
    except (ValueError, OSError) as err:
        raise SystemExit(f"whisfusion evaluate: {err}") from None
    if not items:
        raise SystemExit(f"whisfusion evaluate: no utterances in {', '.join(args.data)}")
    model = load_model(args, "evaluate")
    decode = decode_settings(model, args, "evaluate")
    try:
        check_languages([i.source.language for i in items], model.tokenizer.languages)
    except ValueError as err:
        raise SystemExit(f"whisfusion evaluate: {err}") from None

    results, speed = timed_transcription(model, items, decode, progress=sys.stderr.isatty())
    scored = [(i.id, i.lang, i.text, r.text) for i, r in zip(items, results, strict=True)]
    report, char_report = score_in_both_units(scored)
    failed = [r.path for r in results if not r.ok]
    summary = {
        "checkpoint": str(args.checkpoint),
        "data": list(args.data),
        "utterances": len(items),
        "failed": len(failed),
        "failed_ids": failed[:_SHOWN_FAILURES],
        "language_mode": "predicted" if args.predict_language else "given",
        "language_accuracy": language_accuracy(items, results) if args.predict_language else None,
        "scores": report.to_dict(),
        "cer_every_language": char_report.to_dict(),
        "speed": speed,
        "decode": dataclasses.asdict(decode),
        "machine": machine_info(model.device),
    }

    out = args.output_dir or args.checkpoint.parent / f"eval-{args.checkpoint.stem}"
    out.mkdir(parents=True, exist_ok=True)
    _jsonl(out / "ref.jsonl", [{"id": i.id, "text": i.text, "lang": i.lang} for i in items])
    hyps = []
    for r in results:
        hyps.append({"id": r.path, "text": r.text, "lang": r.language})
        if r.error is not None:
            hyps[-1]["error"] = r.error
    _jsonl(out / "hyp.jsonl", hyps)
    (out / "results.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "results.md").write_text(to_markdown(summary, report, char_report), encoding="utf-8")
    print(report.to_markdown())
    print(f"\n{cer_line(char_report)}")
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in speed["stage_seconds"].items())
    print(
        f"\nRTFx {speed['rtfx']:.1f} whole pipeline, {speed['encoder_rtfx'] or 0:.1f} encoder "
        f"alone (the floor) on {speed['audio_seconds']:.1f} s of audio ({stages}; "
        f"{speed['dtype']}); results in {out}"
    )
    if failed:
        print(
            f"whisfusion evaluate: {len(failed)} utterances could not be decoded "
            f"(scored as empty): {', '.join(failed[:5])}",
            file=sys.stderr,
        )
    return 0
