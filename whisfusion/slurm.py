"""SLURM: the batch script of a training job, its submission, and the in-job environment.

`render_sbatch` fills the template `whisfusion/templates/train.sbatch` (string.Template): one task
per GPU (`--ntasks-per-node` = `--gpus-per-node`), `srun whisfusion train ...`, SIGUSR1 some
seconds before the time limit, `--requeue`, and logs in the run directory. The run directory
is the config's `trainer.run_dir`, not a timestamp, so a requeued job finds its own
`last.ckpt`. Inside the job, `cluster_plugins` hands Lightning the SLURM environment and
`slurm_job_id` names the job to requeue (see `whisfusion.callbacks.preemption`). Lightning
is imported only by those two, so rendering and submitting stay light.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

TEMPLATE = Path(__file__).with_name("templates") / "train.sbatch"
# Seconds before the time limit at which SLURM sends SIGUSR1: enough to finish the current
# step (and a validation run, when one is under way), save and requeue.
SIGNAL_SECONDS = 180


class SlurmError(RuntimeError):
    """A job that cannot be rendered or submitted."""


def _default_executable() -> str:
    beside = Path(sys.executable).with_name("whisfusion")
    return str(beside) if beside.is_file() else "whisfusion"


@dataclass(frozen=True)
class JobSpec:
    # Nodes of the job.
    nodes: int
    # GPUs per node; also tasks (ranks) per node.
    gpus: int
    # Run config file, as given to `whisfusion train --config`.
    config: str
    # Absolute run directory (the config's trainer.run_dir): logs, checkpoints, TensorBoard.
    run_dir: str
    # CPU cores per task: the DataLoader workers and the rank's own process.
    cpus_per_task: int
    # Extra `key=value` overrides passed to `whisfusion train`.
    overrides: tuple[str, ...] = ()
    # Wall-clock limit ("HH:MM:SS", "D-HH:MM:SS"); None = the partition's default.
    time: str | None = None
    # SLURM partition and account; None = the cluster's default.
    partition: str | None = None
    account: str | None = None
    # Seconds before the time limit at which SIGUSR1 arrives.
    signal_seconds: int = SIGNAL_SECONDS
    # Directory the job runs in (relative paths in the config resolve against it).
    workdir: str = field(default_factory=os.getcwd)
    # The `whisfusion` command on the compute nodes (a shared file system is assumed).
    executable: str = field(default_factory=_default_executable)

    @property
    def job_name(self) -> str:
        return "whisfusion-" + Path(self.run_dir).name


def _check_directive_value(name: str, value: str) -> None:
    # #SBATCH lines take no shell quoting, and the same paths appear unquoted in the script.
    if shlex.quote(value) != value:
        raise SlurmError(
            f"{name} '{value}' has spaces or shell special characters; it goes into #SBATCH "
            "lines, which cannot quote it: use a plain path"
        )


def train_command(spec: JobSpec) -> str:
    """The command each task runs: `whisfusion train` with the job's shape set explicitly."""
    args = [
        spec.executable,
        "train",
        "--config",
        spec.config,
        *spec.overrides,
        f"trainer.num_nodes={spec.nodes}",
        f"trainer.devices={spec.gpus}",
        "trainer.accelerator=gpu",
        f"trainer.run_dir={spec.run_dir}",
    ]
    return " ".join(shlex.quote(a) for a in args)


def render_sbatch(spec: JobSpec) -> str:
    """The batch script of `spec` (see the template for what it holds)."""
    if spec.nodes < 1 or spec.gpus < 1:
        raise SlurmError(
            f"need at least one node and one GPU, got --nodes {spec.nodes} --gpus {spec.gpus}"
        )
    if spec.signal_seconds < 1:
        raise SlurmError(f"--signal-seconds must be positive, got {spec.signal_seconds}")
    _check_directive_value("run directory", spec.run_dir)
    _check_directive_value("working directory", spec.workdir)
    optional = [
        f"#SBATCH --{name}={value}"
        for name, value in (
            ("time", spec.time),
            ("partition", spec.partition),
            ("account", spec.account),
        )
        if value
    ]
    for line in optional:
        _check_directive_value("option", line.split("=", 1)[1])
    return Template(TEMPLATE.read_text()).substitute(
        job_name=spec.job_name,
        nodes=spec.nodes,
        gpus=spec.gpus,
        cpus_per_task=spec.cpus_per_task,
        signal_seconds=spec.signal_seconds,
        workdir=spec.workdir,
        run_dir=spec.run_dir,
        optional_directives="\n".join(optional),
        command=train_command(spec),
    )


def submit(script: Path) -> str:
    """`sbatch script`; returns what sbatch printed ("Submitted batch job N")."""
    try:
        result = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
    except FileNotFoundError:
        raise SlurmError(
            f"sbatch not found: is this a SLURM login node? The script is at {script}"
        ) from None
    if result.returncode != 0:
        raise SlurmError(f"sbatch {script} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def slurm_job_id() -> str | None:
    """The id to requeue when this process is a task of a SLURM job (`srun`), else None."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def cluster_plugins() -> list:
    """Lightning plugins for the cluster this process runs on: the SLURM environment, if any.

    `auto_requeue=False`: Lightning's own requeue saves inside the signal handler;
    `whisfusion.callbacks.preemption.StopOnSignal` saves at a step boundary instead.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False, requeue_signal=signal.SIGUSR1)]
