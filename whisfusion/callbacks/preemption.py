"""Leaving training on SIGUSR1 / SIGTERM: save `last.ckpt` at a step boundary, requeue, exit.

SLURM sends SIGUSR1 `--signal=SIGUSR1@N` seconds before the time limit (to every process of
the job step), and SIGTERM when it preempts or cancels a job; elsewhere SIGTERM is the usual
"please stop". Either way the run saves and leaves, and the same command started again
resumes from `<run_dir>/checkpoints/last.ckpt`.

Why not Lightning's own handling. In Lightning 2.6.6 (`trainer/connectors/signal_connector.py`)
`SLURMEnvironment(auto_requeue=True)` installs a SIGUSR1 handler that calls
`trainer.save_checkpoint` inside the signal handler, and its SIGTERM handler broadcasts a
tensor inside the handler. Python runs a handler between two bytecodes of the main thread:
the save can start halfway through an optimizer step (weights updated, step counter not), or
while this rank is inside a collective; ranks get the signal at different points, so one
rank's checkpoint barrier meets another rank's gradient all-reduce and the job hangs or saves
an inconsistent state. Here the handlers only record the signal. Right after every
`CHECK_EVERY_N_STEPS`-th optimizer step every rank all-reduces "did any rank get a signal" (so
all ranks stop at the same step even when the signal reached only some of them; not every
step, since a collective and its host wait per step would idle the GPUs, and SLURM signals
minutes ahead), saves last.ckpt, global rank 0 requeues the
SLURM job (`scontrol requeue`), and every rank raises `TrainingStopped`, which
`whisfusion.train.run_training` turns into a clean exit. The SLURM environment is therefore
given to Lightning with `auto_requeue=False` (`whisfusion.slurm.cluster_plugins`).

SLURM signals every process of the job step, DataLoader workers included, and the default
action of SIGUSR1 and SIGTERM is to terminate: a dead worker would crash the step before it
saves. Workers forked after `setup` inherit the handler here, which ignores signals in any
process but the one that installed it. Lightning installs its own SIGTERM handler (which also
broadcasts) after `setup` and before the workers start, so a DataLoader should also pass
`worker_init_fn=ignore_stop_signals`: the main process alone decides when to stop.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Callback

log = logging.getLogger(__name__)

# Signals that make a run save and stop.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# Optimizer steps between two checks for a stop signal: a few seconds of training at most, well
# inside SLURM's warning (`--signal=SIGUSR1@N`, N of minutes) and its SIGTERM grace period.
CHECK_EVERY_N_STEPS = 4


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: the worker ignores `STOP_SIGNALS` (see the module docstring)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class TrainingStopped(Exception):
    """Raised on every rank after the stop checkpoint is written; not an error."""


def requeue(job_id: str) -> None:
    """`scontrol requeue <job_id>`: SLURM ends this job and queues it again."""
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        log.error(
            "scontrol requeue %s failed (%d): %s; resubmit the job to resume",
            job_id,
            result.returncode,
            result.stderr.strip(),
        )


class StopOnSignal(Callback):
    """Save `checkpoint` and stop at the first optimizer-step boundary after a stop signal.

    Args:
        checkpoint: where to save (the run directory's last.ckpt).
        requeue_job: the SLURM job id to requeue after saving, or None (not under SLURM).
        signals: the signals to handle.
        every_n_steps: optimizer steps between two checks (the same on every rank).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        requeue_job: str | None,
        signals: Sequence[signal.Signals] = STOP_SIGNALS,
        every_n_steps: int = CHECK_EVERY_N_STEPS,
    ):
        self.checkpoint = Path(checkpoint)
        self.every_n_steps = max(1, every_n_steps)
        self.requeue_job = requeue_job
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None
        self._owner_pid = os.getpid()
        self._previous: dict[signal.Signals, object] = {}
        self._checked_step = -1

    def _handle(self, signum: int, frame) -> None:
        # Only record: the work happens at the next step boundary (see the module docstring).
        if os.getpid() == self._owner_pid:
            self.received = signal.Signals(signum)

    def _install(self) -> None:
        self._owner_pid = os.getpid()
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Early, so that a signal during start-up is not lost; training only (validation
        # alone has nothing to save, and a stop signal must stop it as usual).
        if stage == "fit":
            self._install()

    def on_train_start(self, trainer, pl_module) -> None:
        # Again: Lightning installs its own SIGTERM handler between `setup` and here.
        self._install()
        self._checked_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Only right after an optimizer step: with gradient accumulation, a save between
        # micro-batches would drop the gradients accumulated so far.
        if trainer.global_step == self._checked_step or trainer.global_step % self.every_n_steps:
            return
        self._checked_step = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        trainer.save_checkpoint(self.checkpoint, weights_only=False)
        for logger in trainer.loggers:
            logger.save()
        name = self.received.name if self.received is not None else "a stop signal on another rank"
        message = f"stopped by {name} at step {trainer.global_step}; saved {self.checkpoint}"
        if self.requeue_job is not None:
            if trainer.is_global_zero:
                requeue(self.requeue_job)
            message += f"; SLURM job {self.requeue_job} requeued, it resumes from there"
        else:
            message += "; run the same command again to resume"
        raise TrainingStopped(message)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()
