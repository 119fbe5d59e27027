"""A tiny data directory that the real training path consumes, and ways to run training.

`tiny_data_dir` writes what data_prep writes (shards, index.json, tokenizer.model, stats.json)
from synthetic tones, in a second or two. `start_train` runs `whisfusion train` on
configs/tiny.yaml in a separate process, with the probes of tests/train_probe.py:
multi-process DDP and signal tests must not run inside pytest's own process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from data_fixtures import sentence, write_audio

from whisfusion.data.manifest import Utterance
from whisfusion.data.shards import build_index, write_json_atomic, write_shard
from whisfusion.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
PROBE = Path(__file__).with_name("train_probe.py")
LANGS = ["en", "de"]


def tiny_data_dir(root: Path, shards_per_lang: int = 2, per_shard: int = 8, seed: int = 0) -> Path:
    """Train shards per language, one valid shard per language, tokenizer, index, stats."""
    rng = random.Random(seed)
    entries: dict[str, list[dict]] = {"train": [], "valid": []}
    texts = []
    k = 0
    for lang in LANGS:
        for split, n_shards in (("train", shards_per_lang), ("valid", 1)):
            for s in range(n_shards):
                utts = []
                for i in range(per_shard if split == "train" else 2):
                    wav = root / "audio" / f"{lang}-{split}-{s}-{i}.wav"
                    write_audio(wav, rng.uniform(0.5, 1.2), seed=k)
                    k += 1
                    text = sentence(lang, rng)
                    texts.append(text)
                    utts.append(Utterance(f"{lang}-{split}-{s}-{i}", str(wav), 1.0, text, lang))
                rel = f"shards/{split}/{lang}-{s:06d}.tar"
                info = write_shard(root / rel, utts)
                entries[split].append(
                    {
                        "path": rel,
                        "samples": info["samples"],
                        "seconds": info["seconds"],
                        "language": lang,
                    }
                )
    write_json_atomic(root / "index.json", build_index(entries))
    write_json_atomic(root / "stats.json", {"r_max": 8.0})
    train_tokenizer(texts * 10, LANGS, vocab_size=320, out_path=root / "tokenizer.model")
    return root


def train_args(data: Path, run_dir: Path, *overrides: str) -> list[str]:
    """Arguments of `whisfusion train` for a few quick tiny-config steps on `data`."""
    return [
        "train",
        "--config",
        str(TINY),
        f"data.root={data}",
        f"trainer.run_dir={run_dir}",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.shuffle_buffer=8",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        "validation.every_n_steps=0",
        "validation.monitor=''",
        "model.tokenizer.languages=[en,de]",
        *overrides,
    ]


def env(**extra: str) -> dict[str, str]:
    """The environment of a training subprocess: one thread, nothing from SLURM or DDP."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("SLURM_", "MASTER_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "PROBE_")
        )
    }
    base.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return base


def slurm_env(rank: int, world: int, job_id: str, port: int) -> dict[str, str]:
    """What `srun` sets for task `rank` of a one-node job with `world` tasks."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "whisfusion-test",
        "SLURM_NTASKS": str(world),
        "SLURM_NTASKS_PER_NODE": str(world),
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_NODEID": "0",
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_train(args: list[str], probe: Path, **extra_env: str) -> subprocess.Popen:
    """`whisfusion <args>` with the probes of tests/train_probe.py, in its own process group
    (so that it and its DataLoader workers can be signalled together, as SLURM does)."""
    return subprocess.Popen(
        [sys.executable, str(PROBE), *args],
        cwd=ROOT,
        env=env(PROBE_DIR=str(probe), **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """Wait for `proc`; its exit code and output."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"training did not finish in {timeout} s:\n{out[-4000:]}") from None
    return proc.returncode, out


def steps(probe: Path, rank: int = 0) -> list[dict]:
    """The probe's per-step records of `rank`, in order."""
    path = probe / f"steps-rank{rank}.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def wait_for_step(probe: Path, step: int, procs: list[subprocess.Popen], timeout: float = 240):
    """Block until rank 0 has trained global step `step`; fail if a process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = steps(probe)
        if done and done[-1]["step"] >= step:
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(
                    f"training ended early ({p.returncode}):\n{p.stdout.read()[-4000:]}"
                )
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout} s")
