"""SLURM: the rendered batch script, submission, the in-job environment, SIGUSR1 -> requeue."""

import argparse
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, IterableDataset
from train_fixtures import (
    TINY,
    finish,
    free_port,
    slurm_env,
    start_train,
    steps,
    tiny_data_dir,
    train_args,
    wait_for_step,
)

from whisfusion.callbacks.preemption import ignore_stop_signals
from whisfusion.checkpoint_io import AtomicCheckpointIO
from whisfusion.commands import slurm as slurm_command
from whisfusion.config import load_config
from whisfusion.distributed import plan_batches
from whisfusion.slurm import JobSpec, SlurmError, cluster_plugins, render_sbatch, slurm_job_id
from whisfusion.train import build_strategy, build_trainer


def _spec(tmp_path, **over) -> JobSpec:
    base = dict(
        nodes=2,
        gpus=4,
        config="configs/large.yaml",
        run_dir=str(tmp_path / "runs" / "large"),
        cpus_per_task=9,
        overrides=("data.root=/data/x", "optim.lr=1e-4"),
        workdir=str(tmp_path),
        executable="/opt/venv/bin/whisfusion",
    )
    return JobSpec(**{**base, **over})


def _bash_n(script: str, tmp_path: Path) -> None:
    path = tmp_path / "check.sbatch"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_rendered_script_holds_the_job_shape(tmp_path):
    spec = _spec(tmp_path, signal_seconds=240, time="2-00:00:00", partition="gpu")
    script = render_sbatch(spec)
    _bash_n(script, tmp_path)
    run_dir = spec.run_dir
    for line in [
        "#SBATCH --job-name=whisfusion-large",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=9",
        "#SBATCH --signal=SIGUSR1@240",
        "#SBATCH --requeue",
        f"#SBATCH --output={run_dir}/slurm-%j.out",
        f"#SBATCH --error={run_dir}/slurm-%j.err",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --partition=gpu",
    ]:
        assert line in script.splitlines(), line
    assert "--account" not in script
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1
    assert srun[0].endswith(
        "/opt/venv/bin/whisfusion train --config configs/large.yaml data.root=/data/x "
        f"optim.lr=1e-4 trainer.num_nodes=2 trainer.devices=4 trainer.accelerator=gpu "
        f"trainer.run_dir={run_dir}"
    )
    assert f"tensorboard --logdir {run_dir}" in script
    # every #SBATCH line precedes the first command, or sbatch ignores it
    first_command = next(i for i, line in enumerate(script.splitlines()) if line.startswith("set "))
    assert all(i < first_command for i, line in enumerate(script.splitlines()) if "#SBATCH" in line)


def test_paths_that_sbatch_cannot_hold_are_refused(tmp_path):
    with pytest.raises(SlurmError, match="run directory .* has spaces"):
        render_sbatch(_spec(tmp_path, run_dir=str(tmp_path / "my runs")))
    with pytest.raises(SlurmError, match="at least one node"):
        render_sbatch(_spec(tmp_path, gpus=0))


def _slurm(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    slurm_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["slurm", *argv])
    return args.func(args)


def _fake(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_dry_run_prints_and_submits_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "x"
    argv = ["--nodes", "1", "--gpus", "2", "--config", str(TINY), "--data", "d", "--dry-run"]
    assert _slurm([*argv, f"trainer.run_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --ntasks-per-node=2" in out and "data.root=d" in out
    assert "#SBATCH --cpus-per-task=1" in out  # tiny.yaml: data.num_workers 0, plus the rank
    assert not run_dir.exists()


def test_submit_hands_the_script_to_sbatch(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "sbatch", f'cp "$1" {tmp_path}/received.sbatch\necho "Submitted batch job 77"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    argv = ["--nodes", "2", "--gpus", "8", "--config", str(TINY), "--time", "01:00:00"]
    assert _slurm([*argv, "trainer.run_dir=runs/sub", "trainer.global_batch_size=64"]) == 0
    out = capsys.readouterr().out
    written = tmp_path / "runs" / "sub" / "train.sbatch"
    assert (tmp_path / "received.sbatch").read_text() == written.read_text()
    assert "Submitted batch job 77" in out
    assert "global batch 64 = 4 per GPU x 1 accumulated x 16 GPUs" in out
    assert f"tensorboard --logdir {tmp_path}/runs/sub" in out
    assert f"trainer.run_dir={tmp_path}/runs/sub" in written.read_text()


def test_submit_refuses_a_global_batch_that_does_not_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--nodes", "1", "--gpus", "8", "--config", str(TINY), "trainer.global_batch_size=100"]
    with pytest.raises(SystemExit, match="cannot be split evenly over 8 ranks; .* 96 or 104"):
        _slurm(argv)


def test_failed_sbatch_is_reported(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "sbatch", 'echo "sbatch: error: invalid partition" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="invalid partition"):
        _slurm(["--nodes", "1", "--gpus", "1", "--config", str(TINY)])


SRUN_TASK = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "wf"}


def _clear_slurm(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)


def test_job_id_and_plugins_follow_the_environment(monkeypatch):
    _clear_slurm(monkeypatch)
    assert slurm_job_id() is None and cluster_plugins() == []
    for k, v in {**SRUN_TASK, "SLURM_JOB_ID": "123"}.items():
        monkeypatch.setenv(k, v)
    assert slurm_job_id() == "123"
    (env,) = cluster_plugins()
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "5_3"
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation is not a job step
    assert slurm_job_id() is None and cluster_plugins() == []


def _trainer_for(tmp_path, *overrides):
    # ddp with one process: a strategy that has a cluster environment, without starting it
    cfg = load_config(TINY, ["trainer.progress_bar=false", "trainer.strategy=ddp", *overrides])
    plan = plan_batches(cfg.trainer.global_batch_size, 1, cfg.data.batch_size)
    return build_trainer(cfg, tmp_path, [], plan)


def test_trainer_picks_up_slurm(tmp_path, monkeypatch):
    _clear_slurm(monkeypatch)
    trainer = _trainer_for(tmp_path)
    assert isinstance(trainer.strategy.cluster_environment, LightningEnvironment)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    for k, v in slurm_env(0, 1, "9", free_port()).items():
        monkeypatch.setenv(k, v)
    trainer = _trainer_for(tmp_path, "trainer.global_batch_size=16")
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert trainer.accumulate_grad_batches == 2  # 16 = 8 per device x 2


def test_strategies():
    ddp = build_strategy(load_config(TINY, ["trainer.strategy=ddp"]))
    assert isinstance(ddp, DDPStrategy)
    assert ddp._ddp_kwargs == {"find_unused_parameters": False, "broadcast_buffers": False}
    for sharded in ("fsdp", "fsdp_cpu_offload", "deepspeed_stage_2"):
        with pytest.raises(ValueError, match=f"trainer.strategy={sharded} is not supported"):
            build_strategy(load_config(TINY, [f"trainer.strategy={sharded}"]))
    assert build_strategy(load_config(TINY, ["trainer.strategy=auto"])) == "auto"


class _SlowPids(IterableDataset):
    def __iter__(self):
        for _ in range(6):
            time.sleep(0.1)
            yield os.getpid()


def _signal_worker(worker_init_fn) -> list[int]:
    loader = DataLoader(_SlowPids(), batch_size=None, num_workers=1, worker_init_fn=worker_init_fn)
    it = iter(loader)
    worker = next(it)
    os.kill(worker, signal.SIGUSR1)
    os.kill(worker, signal.SIGTERM)
    return [worker, *it]


def test_dataloader_workers_outlive_stop_signals():
    """SLURM signals the workers too; they must leave stopping to the main process."""
    pids = _signal_worker(ignore_stop_signals)
    assert len(pids) == 6 and pids[0] != os.getpid()
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        _signal_worker(None)  # the default: the worker dies, and the step with it


@pytest.mark.slow
def test_sigusr1_saves_requeues_and_the_requeued_job_resumes(tmp_path):
    """Two SLURM tasks (gloo); SIGUSR1 to one task's process group (the task and its DataLoader
    worker, as SLURM signals every process of the step): both tasks save at the same step,
    the fake scontrol gets one requeue, and starting the job again resumes from there."""
    data = tiny_data_dir(tmp_path / "data")
    run_dir, log = tmp_path / "run", tmp_path / "scontrol.log"
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "scontrol", f'echo "$@" >> {log}\n')
    args = train_args(data, run_dir, "trainer.max_steps=500", "trainer.devices=2")
    args += ["trainer.strategy=ddp", "trainer.checkpoint_every_n_steps=100", "data.num_workers=1"]
    port = free_port()
    extra = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    first = tmp_path / "first"
    procs = [start_train(args, first, **extra, **slurm_env(r, 2, "4242", port)) for r in range(2)]
    wait_for_step(first, 3, procs)
    os.killpg(procs[1].pid, signal.SIGUSR1)
    outs = [finish(p) for p in procs]
    assert [rc for rc, _ in outs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    assert "stopped by SIGUSR1" in outs[1][1]
    assert "stopped by a stop signal on another rank" in outs[0][1]
    assert log.read_text().split("\n") == ["requeue 4242", ""]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    step = saved["global_step"]
    assert step == steps(first, 0)[-1]["step"] + 1 == steps(first, 1)[-1]["step"] + 1
    assert (first / "start-rank1.json").read_text().count('"SLURMEnvironment"') == 1

    again = tmp_path / "again"
    port = free_port()
    procs = [
        start_train(
            args, again, PROBE_STOP_AT=str(step + 2), **extra, **slurm_env(r, 2, "4242", port)
        )
        for r in range(2)
    ]
    outs = [finish(p) for p in procs]
    assert [rc for rc, _ in outs] == [0, 0], outs[0][1][-3000:]
    for rank in range(2):
        assert steps(again, rank)[0]["step"] == step
