"""AdamW parameter groups and the warmup + cosine learning-rate curve."""

from __future__ import annotations

import math

import torch
from torch import nn

from whisfusion.config import OptimConfig


def param_groups(
    model: nn.Module, weight_decay: float, lr_scale: dict[str, float] | None = None
) -> list[dict]:
    """Decay matrices only: norms, biases and embeddings get no weight decay.

    Args:
        lr_scale: peak-lr multiplier per parameter-name prefix of `model` (e.g. {"prior.head": 3});
            each group carries its multiplier under "lr_scale".
    Returns:
        one group per (decays, multiplier), the decaying groups first.
    Raises:
        ValueError: a prefix in `lr_scale` names no parameter of `model`.
    """
    lr_scale = lr_scale or {}
    names = [name for name, _ in model.named_parameters()]
    unknown = [p for p in lr_scale if not any(_under(name, p) for name in names)]
    if unknown:
        raise ValueError(
            f"optim.lr_scale names {', '.join(unknown)}, which match no decoder parameter "
            f"(top-level modules: {', '.join(sorted({n.split('.')[0] for n in names}))})"
        )
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{name}" if module_name else name
            decays = not (isinstance(module, nn.Embedding) or param.ndim < 2 or name == "bias")
            scale = next((s for p, s in lr_scale.items() if _under(full, p)), 1.0)
            groups.setdefault((decays, scale), []).append(param)
    order = sorted(groups, key=lambda key: (not key[0], key[1]))
    return [
        {"params": groups[key], "weight_decay": weight_decay if key[0] else 0.0, "lr_scale": key[1]}
        for key in order
    ]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at `step`: linear warmup, then cosine down to `min_ratio`.

    Computed from `max_steps` (not the trainer's estimated stepping batches, which would have to
    iterate a streaming loader).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: OptimConfig, max_steps: int):
    """AdamW over the trainable parameters of `model` and its per-step LambdaLR."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr_scale)
    for group in groups:
        group["lr"] = cfg.lr * group.pop("lr_scale")
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, cfg.warmup_steps, max_steps, cfg.min_lr_ratio)
    )
    return opt, sched
