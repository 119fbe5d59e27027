"""`whisfusion transcribe --checkpoint C FILES_OR_DIRS... [--output out.jsonl|out.txt]`

Directories are searched recursively for audio files soundfile can decode (AUDIO_SUFFIXES);
files named on the command line are tried whatever their suffix. Output, one line per input
in the order given (files of a directory sorted by path):
    jsonl  {"path", "text", "language"}, plus "error" (and empty text) for an unreadable file
    txt    path<TAB>text, transcribed files only
to --output (format from its suffix, or --format) or stdout (txt unless --format jsonl).
Unreadable files are named on stderr. Exit status 0 when at least one file was transcribed,
1 when none could be (or none was found).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from whisfusion.config.decode import DECODE_DTYPES, DECODE_METHODS
from whisfusion.pdd.sampler import REMASKING
from whisfusion.pdd.select import METHODS

# Suffixes of the formats libsndfile decodes, looked for inside directories.
AUDIO_SUFFIXES = (
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aif",
    ".aiff",
    ".au",
    ".caf",
    ".w64",
)
FORMATS = ("jsonl", "txt")


def add_decode_options(p: argparse.ArgumentParser) -> None:
    """Options shared with `evaluate`: the checkpoint, the machine and the decode overrides."""
    p.add_argument("--checkpoint", required=True, type=Path, help="trained checkpoint (.ckpt)")
    p.add_argument(
        "--encoder",
        help="where the frozen encoder's weights are on this machine, when not at the path "
        "recorded in the checkpoint",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument(
        "--method",
        choices=DECODE_METHODS,
        help="pdd: the diffusion decoder (default); ctc: greedy reading of the alignment head",
    )
    p.add_argument("--steps", type=int, help="denoising steps T (default: the checkpoint's)")
    p.add_argument("--candidates", type=int, help="candidate transcripts K per utterance")
    p.add_argument(
        "--remasking",
        choices=REMASKING,
        help="low_confidence: commit the most confident positions each step; random: re-mask "
        "a share of the canvas each step (v1)",
    )
    p.add_argument(
        "--blocks",
        type=int,
        help="semi-autoregressive blocks filled left to right (low_confidence; 1 = the whole "
        "canvas at once)",
    )
    p.add_argument(
        "--eos-threshold",
        type=float,
        help="length first: the first step commits the canvas's tail read as EOS with at least "
        "this probability, the T steps go to the positions before it (0 = off)",
    )
    p.add_argument(
        "--commit-threshold",
        type=float,
        help="also commit, at each step, every position predicted with at least this "
        "probability (fewer steps where the model is sure; 0 = off)",
    )
    p.add_argument(
        "--kv-refresh",
        type=int,
        help="recompute every position's self-attention keys every this many steps, in "
        "between only the positions a step reads and the ones just committed (1 = every "
        "step, exact)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        help="sampling temperature of candidates 2..K (0 = all greedy)",
    )
    p.add_argument("--select", choices=METHODS, help="how one candidate is picked")
    p.add_argument("--batch-size", type=int, help="utterances or chunks per decoding batch")
    p.add_argument(
        "--max-padding",
        type=float,
        help="decode a batch in groups whose canvases are padded by at most this share "
        "(0: equal lengths only, best on a CPU; 1: the whole batch at once)",
    )
    p.add_argument(
        "--segment-s",
        type=float,
        help="cut audio longer than this many seconds at its pauses into segments decoded "
        "apart (0: off, 30 s windows)",
    )
    p.add_argument("--seed", type=int, help="seed of the sampling noise")
    p.add_argument(
        "--dtype",
        choices=DECODE_DTYPES,
        help="decoding precision (default: the checkpoint's decode.dtype; auto = bfloat16 on "
        "CUDA, float32 on the CPU)",
    )
    p.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        help="the decoder's linear layers in int8 on the CPU, as faster-whisper's int8 "
        "(default: the checkpoint's decode.int8; a GPU ignores it)",
    )
    p.add_argument(
        "--align-weight",
        type=float,
        help="weight of the alignment head's reading in the decoder's logits (models trained "
        "with model.decoder.align_best_path)",
    )
    p.add_argument(
        "--blank-penalty",
        type=float,
        help="taken off the alignment head's blank log-probability before it is read (fewer "
        "dropped tokens; models with the alignment head)",
    )
    p.add_argument(
        "--language-vocab-min-count",
        type=int,
        metavar="N",
        help="with a given language, block tokens its training transcripts used fewer than N "
        "times (0 = any token)",
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe audio files (long files are chunked and merged)",
        description="Transcribe audio files and directories. Example:\n  whisfusion transcribe "
        "--checkpoint runs/demo/checkpoints/last.ckpt recordings/ talk.mp3 --output out.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_decode_options(p)
    p.add_argument("inputs", nargs="+", type=Path, metavar="FILE_OR_DIR", help="audio files, dirs")
    p.add_argument("--language", help="language of every input (default: predicted per input)")
    p.add_argument("--output", type=Path, help="write here instead of stdout (.jsonl or .txt)")
    p.add_argument("--format", choices=FORMATS, help="output format (default: from --output)")
    p.set_defaults(func=run)


def collect_inputs(paths: Sequence[Path]) -> list[Path]:
    """Files as given, and the audio files under each directory, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES
            )
        else:
            found.append(path)
    return found


def load_model(args: argparse.Namespace, command: str):
    """The checkpoint's model on the chosen device, or a clean exit saying why not."""
    import torch

    from whisfusion.checkpoint import CheckpointError
    from whisfusion.model import Whisfusion

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"whisfusion {command}: --device cuda, but no CUDA device is available")
    try:
        return Whisfusion.from_checkpoint(args.checkpoint, args.encoder, map_location=device)
    except CheckpointError as err:
        raise SystemExit(f"whisfusion {command}: {err}") from None


def decode_settings(model, args: argparse.Namespace, command: str):
    """The model's decoding options with the command line's overrides, checked against it."""
    from whisfusion.options import DecodeOptions

    try:
        options = DecodeOptions.from_config(
            model.cfg.decode,
            method=args.method,
            steps=args.steps,
            candidates=args.candidates,
            remasking=args.remasking,
            blocks=args.blocks,
            eos_threshold=args.eos_threshold,
            commit_threshold=args.commit_threshold,
            kv_refresh=args.kv_refresh,
            temperature=args.temperature,
            select=args.select,
            batch_size=args.batch_size,
            seed=args.seed,
            dtype=args.dtype,
            int8=args.int8,
            max_padding=args.max_padding,
            segment_s=args.segment_s,
            align_weight=args.align_weight,
            language_vocab_min_count=args.language_vocab_min_count,
            blank_penalty=args.blank_penalty,
        )
        model.check_options(options)
        return options
    except ValueError as err:
        raise SystemExit(f"whisfusion {command}: {err}") from None


def output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.output is None or args.output.suffix.lower() != ".jsonl":
        return "txt"
    return "jsonl"


def write_results(results, fmt: str, out: TextIO) -> None:
    for r in results:
        if fmt == "jsonl":
            row = {"path": r.path, "text": r.text, "language": r.language}
            if r.error is not None:
                row["error"] = r.error
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif r.ok:
            out.write(f"{r.path}\t{r.text}\n")


def run(args: argparse.Namespace) -> int:
    from whisfusion.transcribe import check_languages, sources_from_inputs, transcribe_sources

    files = collect_inputs(args.inputs)
    if not files:
        raise SystemExit(
            f"whisfusion transcribe: no audio files ({', '.join(AUDIO_SUFFIXES)}) in "
            f"{', '.join(map(str, args.inputs))}"
        )
    model = load_model(args, "transcribe")
    options = decode_settings(model, args, "transcribe")
    try:
        check_languages([args.language], model.tokenizer.languages)
    except ValueError as err:
        raise SystemExit(f"whisfusion transcribe: {err}") from None
    sources = sources_from_inputs([str(f) for f in files], args.language)
    results = transcribe_sources(model, sources, options, progress=sys.stderr.isatty())
    fmt = output_format(args)
    if args.output is None:
        write_results(results, fmt, sys.stdout)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("w", encoding="utf-8") as out:
            write_results(results, fmt, out)
    failed = [r for r in results if not r.ok]
    if failed:
        lines = "\n".join(f"  {r.path}: {r.error}" for r in failed)
        print(
            f"whisfusion transcribe: {len(failed)} of {len(results)} files could not be "
            f"transcribed:\n{lines}",
            file=sys.stderr,
        )
    return 1 if len(failed) == len(results) else 0
