"""`whisfusion train --config configs/X.yaml [key=value ...]`"""

from __future__ import annotations

import argparse

from whisfusion.config import ConfigError, load_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (resumes from the run directory's last checkpoint)",
        description="Train on WebDataset shards. Example:\n  whisfusion train --config "
        "configs/demo.yaml data.root=data/demo trainer.max_steps=200",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config merged over the defaults")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run)


def run(args) -> int:
    from whisfusion.train import run_training  # heavy imports only when training

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        raise SystemExit(f"whisfusion train: {err}") from None
    run_training(cfg)
    return 0
