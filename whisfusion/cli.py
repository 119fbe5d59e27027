"""The `whisfusion` command: `whisfusion <subcommand> --help` for each."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules; each has `add_parser(subparsers)` that sets `func` on its parser.
COMMANDS = ["train", "transcribe", "evaluate", "baseline", "score", "slurm", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisfusion",
        description="Masked-diffusion ASR on a frozen Whisper encoder: train, transcribe, score.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"whisfusion.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
