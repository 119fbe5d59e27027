"""Optimisation, trainer and run-directory configuration."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OptimConfig:
    # Peak learning rate reached after warmup.
    lr: float = 3.0e-4
    # AdamW betas (0.9, 0.95) as in SMDM / LLaDA training.
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    # Decoupled weight decay on matrices; never on norms, biases or embeddings.
    weight_decay: float = 0.05
    # Linear warmup steps.
    warmup_steps: int = 200
    # Cosine decay ends at lr * min_lr_ratio at max_steps.
    min_lr_ratio: float = 0.1
    # Peak-lr multipliers by decoder parameter-name prefix, e.g. {"prior.head": 3.0}: a head that
    # learns faster than the Transformer can get a larger step; {} = one lr for all.
    lr_scale: dict[str, float] = field(default_factory=dict)
    # Gradient-norm clipping threshold (0 = off).
    grad_clip: float = 1.0


@dataclass
class TrainerConfig:
    # Run directory: checkpoints, TensorBoard logs, resolved config. Fixed, so a rerun resumes.
    run_dir: str = "runs/tiny"
    # Optimizer steps to train for (there are no epochs: shards are resampled).
    max_steps: int = 1000
    # "cpu", "gpu" or "auto".
    accelerator: str = "auto"
    # Devices per node ("auto" or a count).
    devices: str = "auto"
    # Nodes in the job.
    num_nodes: int = 1
    # "32-true", "bf16-mixed" or "16-mixed".
    precision: str = "32-true"
    # Global batch in utterances; 0 = data.batch_size x devices x nodes (no accumulation).
    global_batch_size: int = 0
    # "ddp" (several devices) or "auto"; sharded strategies (FSDP) are refused: the decoder and
    # its optimizer state fit on one device.
    strategy: str = "auto"
    # Log training scalars every this many steps.
    log_every_n_steps: int = 10
    # Save a checkpoint every this many steps (last.ckpt is overwritten atomically).
    checkpoint_every_n_steps: int = 500
    # Seed of model init and the mask schedule.
    seed: int = 1234
    # EMA decay of the decoder weights (0 = no EMA).
    ema_decay: float = 0.0
    # Consecutive non-finite losses after which the run stops.
    max_nonfinite_in_row: int = 20
    # Show a progress bar.
    progress_bar: bool = True
