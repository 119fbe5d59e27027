"""Tiny trained-looking models and checkpoints for tests (random encoder, no downloads)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from whisfusion.checkpoint import CHECKPOINT_KEY, payload
from whisfusion.config import load_config
from whisfusion.model import Whisfusion
from whisfusion.tokenizer import Tokenizer, train_tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LANGS = ["en", "de", "zh"]
TEXTS = [
    "the cat sat on the mat",
    "a dog runs in the park",
    "der Hund schläft im Garten",
    "das Haus ist sehr groß",
    "我们今天去公园",
    "你好世界",
]


def tiny_tokenizer() -> Tokenizer:
    return train_tokenizer([t for t in TEXTS for _ in range(20)], LANGS, vocab_size=300)


def tiny_model(overrides: list[str] | None = None, seed: int = 0) -> Whisfusion:
    """An untrained tiny model (random encoder and decoder) with a 3-language tokenizer."""
    cfg = load_config(CONFIGS / "tiny.yaml", ["model.canvas.r_max=8", *(overrides or [])])
    torch.manual_seed(seed)
    return Whisfusion.from_config(cfg, tiny_tokenizer()).eval()


def save_checkpoint(model: Whisfusion, path: Path) -> Path:
    """A checkpoint as training writes it (decoder weights under `model.decoder.`)."""
    state = {f"model.decoder.{k}": v for k, v in model.decoder.state_dict().items()}
    torch.save({"state_dict": state, CHECKPOINT_KEY: payload(model)}, path)
    return path


def feature_batches(model: Whisfusion, n: int, seed: int = 0) -> list[dict]:
    """`n` training batches of 2 utterances: random encoder features and token canvases."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "features": torch.randn(2, 10, model.encoder.width, generator=g),
            "feature_valid": torch.ones(2, 10, dtype=torch.bool),
            "tokens": torch.randint(2, model.tokenizer.vocab_size, (2, 16), generator=g),
            "canvas_valid": torch.ones(2, 16, dtype=torch.bool),
        }
        for _ in range(n)
    ]


def cpu_trainer(tmp_path: Path, max_steps: int, callbacks=()) -> L.Trainer:
    """A CPU trainer without logging, checkpoints, progress bar or sanity validation."""
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )


def fit_batches(module, batches: list[dict], tmp_path: Path, callbacks=()) -> L.Trainer:
    """Train `module` one optimizer step per batch of `batches`, on the CPU, without logging."""
    trainer = cpu_trainer(tmp_path, len(batches), callbacks)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return trainer
