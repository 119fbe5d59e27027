"""Multi-device bookkeeping: how a global batch splits over ranks, and whether ranks agree.

Two jobs, both run before the first training step:

- `plan_batches`: a global batch of G utterances over W ranks becomes a per-device micro-batch
  b and an accumulation count a with G = b * a * W exactly, b never above the memory limit
  `data.batch_size`.
- `RankAgreement`: every rank hashes what it trains on (resolved config YAML, tokenizer bytes,
  sorted training shard list) and all-gathers the hashes. A rank that read a different file
  fails at start-up with a message naming the part and the ranks, instead of training on
  inconsistent inputs or hanging later in a collective whose shapes differ between ranks.
  It also prints the start-up summary (world size, ranks, shards per rank).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from lightning.pytorch import Callback

# Checkpoint key of the batch plan that trained it.
BATCH_PLAN_KEY = "batch_plan"
# Parts of a rank's fingerprint, in gather order.
FINGERPRINT_PARTS = ("config", "tokenizer", "shards")


class BatchPlanError(ValueError):
    """A global batch size that cannot be split evenly over the ranks."""


class RankMismatchError(RuntimeError):
    """Ranks of one job were started on different configs, tokenizers or shard lists."""


@dataclass(frozen=True)
class BatchPlan:
    # Utterances per device per forward pass (the DataLoader batch size).
    per_device: int
    # Micro-batches accumulated per optimizer step.
    accumulate: int
    # Ranks taking part (devices per node x nodes).
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulate * self.world_size

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "global_batch": self.global_batch}


def plan_batches(global_batch: int, world_size: int, max_per_device: int) -> BatchPlan:
    """Split `global_batch` utterances per optimizer step over `world_size` ranks.

    The per-device batch is the largest divisor of `global_batch / world_size` that does not
    exceed `max_per_device` (fewest accumulation steps, so the least time lost to small
    batches). `global_batch = 0` means no accumulation: `max_per_device` on every rank.

    Raises:
        BatchPlanError: `global_batch` is not a positive multiple of `world_size`, naming the
            nearest sizes that are.
    """
    if world_size < 1 or max_per_device < 1:
        raise BatchPlanError(
            f"world size ({world_size}) and data.batch_size ({max_per_device}) must be positive"
        )
    if global_batch == 0:
        return BatchPlan(max_per_device, 1, world_size)
    if global_batch < 0 or global_batch % world_size:
        below = max(global_batch, 0) // world_size * world_size
        near = " or ".join(str(m) for m in (below, below + world_size) if m > 0)
        raise BatchPlanError(
            f"trainer.global_batch_size={global_batch} cannot be split evenly over {world_size} "
            f"ranks; use a multiple of {world_size}, e.g. {near}"
        )
    per_rank = global_batch // world_size
    accumulate = math.ceil(per_rank / max_per_device)
    while per_rank % accumulate:
        accumulate += 1
    return BatchPlan(per_rank // accumulate, accumulate, world_size)


def expected_world_size(accelerator: str, devices: str, num_nodes: int) -> int:
    """Ranks a trainer config asks for; devices "auto" means every visible GPU (1 without)."""
    if devices != "auto":
        return int(devices) * num_nodes
    gpus = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return (torch.cuda.device_count() if gpus else 1) * num_nodes


def plan_for(cfg) -> BatchPlan:
    """`plan_batches` for a `RunConfig`: its global batch, world size and data.batch_size."""
    t = cfg.trainer
    world = expected_world_size(t.accelerator, t.devices, t.num_nodes)
    return plan_batches(t.global_batch_size, world, cfg.data.batch_size)


def train_shard_listing(data_cfg) -> list[str]:
    """The training shards of `data_cfg` as `path:samples`, paths relative to data.root.

    Relative, so ranks whose nodes mount the data at different places still agree.
    """
    from whisfusion.data.datamodule import select_shards
    from whisfusion.data.shards import read_index

    root = Path(data_cfg.root)
    entries = select_shards(read_index(root), root, "train", data_cfg.train_shards)
    base = root.resolve()
    return sorted(f"{os.path.relpath(e['path'], base)}:{e['samples']}" for e in entries)


def fingerprint(config_yaml: str, tokenizer: bytes, shards: Sequence[str]) -> dict[str, str]:
    """sha256 hex digest of each part a rank trains on (keys: `FINGERPRINT_PARTS`)."""
    listing = "\n".join(sorted(str(s) for s in shards)).encode()
    parts = {"config": config_yaml.encode(), "tokenizer": bytes(tokenizer), "shards": listing}
    return {name: hashlib.sha256(parts[name]).hexdigest() for name in FINGERPRINT_PARTS}


def mismatch_message(per_rank: Sequence[dict[str, str]]) -> str | None:
    """None when every rank has rank 0's fingerprint; else which parts differ on which ranks."""
    reference = per_rank[0]
    lines = []
    for name in FINGERPRINT_PARTS:
        differ = [rank for rank, fp in enumerate(per_rank) if fp[name] != reference[name]]
        if differ:
            ranks = ", ".join(str(r) for r in differ)
            other = per_rank[differ[0]][name]
            lines.append(
                f"{name} differs from rank 0 on rank(s) {ranks} "
                f"(rank 0 {reference[name][:12]}, rank {differ[0]} {other[:12]})"
            )
    if not lines:
        return None
    return (
        "ranks of this job do not train on the same inputs: "
        + "; ".join(lines)
        + ". Start every rank from the same config file, data.root and tokenizer."
    )


def _to_tensor(fp: dict[str, str], device: torch.device) -> torch.Tensor:
    """(P, 32) int64 digest bytes; int64 because every backend all-gathers it."""
    rows = [list(bytes.fromhex(fp[name])) for name in FINGERPRINT_PARTS]
    return torch.tensor(rows, dtype=torch.int64, device=device)


def _from_tensor(t: torch.Tensor) -> dict[str, str]:
    return {name: bytes(t[i].tolist()).hex() for i, name in enumerate(FINGERPRINT_PARTS)}


class RankAgreement(Callback):
    """Fails fast when ranks disagree on their inputs; prints who trains on what.

    Runs in `setup`, after the process group exists and before the model is wrapped: the
    first collective of the run, so a mismatch is reported rather than turned into a hang.

    Args:
        config_yaml, tokenizer: the resolved run config and the tokenizer model bytes.
        shards: the training shards (`train_shard_listing`); every stream of every rank draws
            from all of them with replacement (see `whisfusion.data.stream`).
        plan: the batch plan, for the summary.
        workers: DataLoader workers per rank, one stream each (data.num_workers).
    """

    def __init__(
        self,
        config_yaml: str,
        tokenizer: bytes,
        shards: Sequence[str],
        plan: BatchPlan,
        workers: int = 1,
    ):
        self.fingerprint = fingerprint(config_yaml, tokenizer, shards)
        self.shards, self.plan, self.workers = list(shards), plan, max(1, workers)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # how this checkpoint's steps were made; a resumed run may use another plan
        checkpoint[BATCH_PLAN_KEY] = self.plan.as_dict()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        fp = self.fingerprint
        if trainer.world_size > 1:
            gathered = trainer.strategy.all_gather(_to_tensor(fp, trainer.strategy.root_device))
            message = mismatch_message([_from_tensor(row) for row in gathered.cpu()])
            if message:
                raise RankMismatchError(message)
        if trainer.global_rank == 0:
            p = self.plan
            print(
                f"whisfusion: world size {trainer.world_size} = {trainer.num_nodes} node(s) x "
                f"{trainer.num_devices} device(s); global batch {p.global_batch} = "
                f"{p.per_device} per device x {p.accumulate} accumulated x {p.world_size} ranks; "
                f"{len(self.shards)} training shards; inputs sha256 "
                + " ".join(f"{k}={v[:12]}" for k, v in fp.items()),
                flush=True,
            )
        print(
            f"whisfusion: rank {trainer.global_rank}/{trainer.world_size} "
            f"(node {trainer.node_rank}, local {trainer.local_rank}) reads "
            f"{self.workers} stream(s), one per data worker, each drawing shards with "
            f"replacement from all {len(self.shards)} training shards and keeping every sample "
            "it reads; seeded by (data.seed, rank, worker, resume count)",
            flush=True,
        )
