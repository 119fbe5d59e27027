"""Decoding speed: whisfusion's diffusion decoder (PDD) against Whisper's autoregressive decoder.

    python -m bench.decoding                  # CPU profile -> bench/out/, bench/RESULTS.md
    python -m bench.decoding --device cuda    # GPU profile (large sizes, bf16 autocast)
    python bench/decoding.py --lengths 16 64 --batches 1 --steps 4 --candidates 1 8
    whisfusion bench ...                      # the same, from a source checkout

Same machine, same encoder output, same transcript lengths N for every decoder. Writes
`decoding.json` (every measurement and the machine), `decoding.md` (tables and summary) and
`decoding.png` (time against N) under --out, and replaces this profile's section of --results.
Then the end-to-end comparison on 2-30 s clips (`bench.e2e`; `--no-e2e` skips it, `--e2e-only`
runs it alone): `e2e.json`, `e2e.md` and the `<profile>-e2e` section of --results.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.profiles import PROFILES, Profile  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out"
DEFAULT_RESULTS = BENCH_DIR / "RESULTS.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by `python -m bench.decoding` and `whisfusion bench`)."""
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu: tiny/demo decoders vs Whisper-base (default); cuda: large decoder "
        "vs Whisper-large-v3 and -turbo, bf16 autocast",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch (and CTranslate2) CPU threads (default: the cores not already busy at the "
        "start, by the 1-minute load average; all of them on a quiet machine)",
    )
    p.add_argument(
        "--lengths", type=int, nargs="+", metavar="N", help="transcript lengths in tokens"
    )
    p.add_argument("--batches", type=int, nargs="+", metavar="B", help="batch sizes")
    p.add_argument("--steps", type=int, nargs="+", metavar="T", help="PDD steps")
    p.add_argument("--candidates", type=int, nargs="+", metavar="K", help="PDD candidates")
    p.add_argument(
        "--sizes",
        nargs="+",
        metavar="CONFIG",
        help="diffusion decoders to time: the profile's own (cpu: tiny demo base-sized; cuda: "
        "large) or names of configs/*.yaml",
    )
    p.add_argument(
        "--kv-refresh",
        type=int,
        dest="pdd_kv_refresh",
        metavar="R",
        help="PDD recomputes its self-attention keys every R steps, in between only the "
        "positions a step reads and the ones just committed (decode.kv_refresh; default 1)",
    )
    p.add_argument("--repeats", type=int, help="timed runs per measurement (median reported)")
    p.add_argument(
        "--max-time",
        type=float,
        dest="max_time_s",
        metavar="S",
        help="stop repeating once a measurement's timed runs add up to S seconds",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="do not time CTranslate2 or faster-whisper"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (%(default)s)")
    p.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help="results file whose section for this profile is replaced (%(default)s)",
    )
    p.add_argument("--no-results", action="store_true", help="leave the results file alone")
    e2e = p.add_mutually_exclusive_group()
    e2e.add_argument(
        "--no-e2e", action="store_true", help="skip the end-to-end comparison on real clips"
    )
    e2e.add_argument("--e2e-only", action="store_true", help="run only the end-to-end comparison")
    p.add_argument(
        "--e2e-config",
        metavar="CONFIG",
        help="configs/*.yaml whose pipeline the end-to-end comparison times (cpu: demo, the "
        "default demo model; cuda: large)",
    )
    p.add_argument(
        "--e2e-override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides of the timed whisfusion pipeline, over --e2e-config's or the "
        "checkpoint's (e.g. decode.int8=true decode.steps=8)",
    )
    p.add_argument(
        "--e2e-checkpoint",
        metavar="CKPT",
        help="a trained checkpoint whose pipeline the end-to-end comparison times instead of "
        "--e2e-config's untrained model (e.g. runs/demo/checkpoints/last.ckpt)",
    )


def profile_from_args(args: argparse.Namespace) -> Profile:
    profile = PROFILES["gpu" if args.device == "cuda" else "cpu"]()
    return profile.with_overrides(
        batches=args.batches,
        steps=args.steps,
        candidates=args.candidates,
        sizes=args.sizes,
        lengths=None if args.lengths is None else tuple(args.lengths),
        repeats=args.repeats,
        max_time_s=args.max_time_s,
        pdd_kv_refresh=args.pdd_kv_refresh,
        e2e_config=args.e2e_config,
        e2e_checkpoint=args.e2e_checkpoint,
        e2e_overrides=(*profile.e2e_overrides, *args.e2e_override) or None,
    )


def run(args: argparse.Namespace) -> int:
    from bench.benchmark import run_benchmark, run_e2e_benchmark  # heavy imports when running
    from bench.machine import idle_cores
    from bench.report import render_e2e_markdown, render_markdown

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    profile, threads = profile_from_args(args), args.threads or idle_cores()
    results = None if args.no_results else args.results
    if not args.e2e_only:
        result = run_benchmark(
            profile, threads, args.out, results, with_reference=not args.no_reference
        )
        print(render_markdown(result))
    if not args.no_e2e:
        print(render_e2e_markdown(run_e2e_benchmark(profile, threads, args.out, results)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decoding",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
