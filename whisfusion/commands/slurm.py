"""`whisfusion slurm --nodes N --gpus G --config C [--data D] [options] [key=value ...]`

Renders the SLURM batch script of a training run and submits it with `sbatch` (or prints it
with --dry-run). The config is loaded here first, so a typo or a global batch that does not
split over N x G GPUs fails now rather than after waiting in the queue.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from whisfusion.config import ConfigError, load_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "slurm",
        help="submit a multi-GPU / multi-node training job to SLURM",
        description="Render and submit the SLURM job of a training run. Example:\n"
        "  whisfusion slurm --nodes 4 --gpus 8 --config configs/large.yaml "
        "--data /data/whisfusion --time 2-00:00:00\n"
        "The job writes <trainer.run_dir>/slurm-<jobid>.out, requeues itself before its time\n"
        "limit and resumes from <trainer.run_dir>/checkpoints/last.ckpt.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from whisfusion.slurm import SIGNAL_SECONDS

    p.add_argument("--nodes", type=int, required=True, help="nodes of the job")
    p.add_argument("--gpus", type=int, required=True, help="GPUs (= tasks) per node")
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument("--data", help="data directory written by data_prep (sets data.root)")
    p.add_argument("--time", help="time limit, e.g. 24:00:00 (default: the partition's)")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument(
        "--cpus-per-task", type=int, help="CPU cores per GPU (default: data.num_workers + 1)"
    )
    p.add_argument(
        "--signal-seconds",
        type=int,
        default=SIGNAL_SECONDS,
        help=f"SIGUSR1 this long before the time limit (default {SIGNAL_SECONDS})",
    )
    p.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run)


def run(args) -> int:
    from whisfusion.distributed import BatchPlanError, plan_batches
    from whisfusion.slurm import JobSpec, SlurmError, render_sbatch, submit

    overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
    try:
        cfg = load_config(args.config, overrides)
        plan = plan_batches(
            cfg.trainer.global_batch_size, args.nodes * args.gpus, cfg.data.batch_size
        )
    except (ConfigError, BatchPlanError) as err:
        raise SystemExit(f"whisfusion slurm: {err}") from None
    run_dir = Path(cfg.trainer.run_dir).absolute()
    spec = JobSpec(
        nodes=args.nodes,
        gpus=args.gpus,
        config=str(Path(args.config).absolute()),
        run_dir=str(run_dir),
        cpus_per_task=args.cpus_per_task or cfg.data.num_workers + 1,
        overrides=tuple(overrides),
        time=args.time,
        partition=args.partition,
        account=args.account,
        signal_seconds=args.signal_seconds,
    )
    try:
        script = render_sbatch(spec)
        if args.dry_run:
            print(script)
            return 0
        run_dir.mkdir(parents=True, exist_ok=True)  # SLURM does not create --output's directory
        path = run_dir / "train.sbatch"
        path.write_text(script)
        print(submit(path))
    except SlurmError as err:
        raise SystemExit(f"whisfusion slurm: {err}") from None
    print(
        f"global batch {plan.global_batch} = {plan.per_device} per GPU x {plan.accumulate} "
        f"accumulated x {plan.world_size} GPUs\n"
        f"script:      {path}\n"
        f"logs:        {run_dir}/slurm-<jobid>.out\n"
        f"tensorboard: tensorboard --logdir {run_dir}"
    )
    return 0
