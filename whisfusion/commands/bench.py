"""`whisfusion bench [--device cuda] [options]`: the decoding-speed benchmark (bench/decoding.py).

The benchmark lives beside the package in the source tree (it needs the development
requirements: transformers, matplotlib), so this command works from a source checkout; the
options are `python -m bench.decoding`'s.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DESCRIPTION = (
    "Time whisfusion's parallel diffusion decoder against Whisper's autoregressive decoder "
    "(same machine, encoder output and transcript lengths). Examples:\n"
    "  whisfusion bench                  # CPU profile -> bench/out/, bench/RESULTS.md\n"
    "  whisfusion bench --device cuda    # GPU profile: large sizes, bf16 autocast"
)


def load_benchmark():
    """The `bench.decoding` module of this source checkout, or None outside one."""
    if not (REPO_ROOT / "bench" / "decoding.py").is_file():
        return None
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module("bench.decoding")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="decoding-speed benchmark: PDD against Whisper's autoregressive decoder",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    benchmark = load_benchmark()
    if benchmark is None:
        p.add_argument("options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=_not_a_checkout)
        return
    benchmark.add_arguments(p)
    p.set_defaults(func=benchmark.run)


def _not_a_checkout(args) -> int:
    raise SystemExit(
        f"whisfusion bench: the benchmark is in the source tree (bench/decoding.py), which is "
        f"not beside this installation ({REPO_ROOT}); run it from a checkout of the repository"
    )
