"""`Whisfusion`: the frozen encoder, the diffusion decoder and the tokenizer as one model.

The LightningModule trains it; `Whisfusion.from_checkpoint` rebuilds it for inference from a
self-contained checkpoint (decoder weights, tokenizer, config, and the encoder's source + hash:
the frozen encoder's weights are never copied into checkpoints).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from whisfusion.config import RunConfig, config_from_dict, config_to_dict
from whisfusion.decoder import CrossCache, DiffusionDecoder
from whisfusion.encoder import FrozenWhisperEncoder
from whisfusion.tokenizer import Tokenizer

CHECKPOINT_KEY = "whisfusion"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be turned back into a model."""


class Whisfusion(nn.Module):
    """Frozen Whisper encoder + masked-diffusion decoder + tokenizer."""

    def __init__(self, cfg: RunConfig, tokenizer: Tokenizer, encoder: FrozenWhisperEncoder):
        super().__init__()
        self.cfg, self.tokenizer, self.encoder = cfg, tokenizer, encoder
        self.decoder = DiffusionDecoder(cfg.model.decoder, tokenizer.vocab_size, encoder.width)

    @classmethod
    def from_config(cls, cfg: RunConfig, tokenizer: Tokenizer) -> "Whisfusion":
        return cls(cfg, tokenizer, FrozenWhisperEncoder.from_config(cfg.model.encoder))

    @property
    def device(self) -> torch.device:
        return self.decoder.head.weight.device

    def encode(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, S) 16 kHz, lengths (B,) -> features (B, T, E), valid (B, T) bool."""
        return self.encoder.encode(audio, lengths)

    def cross_cache(self, features: torch.Tensor, valid: torch.Tensor) -> CrossCache:
        return self.decoder.cross_cache(features.to(self.decoder.head.weight.dtype), valid)

    def checkpoint_payload(self) -> dict:
        """What a checkpoint needs beyond the decoder weights to rebuild this model."""
        proto = self.tokenizer.to_bytes()
        return {
            "format": 1,
            "config": config_to_dict(self.cfg),
            # a uint8 tensor, because checkpoints are read with torch.load(weights_only=True)
            "tokenizer": torch.frombuffer(bytearray(proto), dtype=torch.uint8).clone(),
            "encoder": {"source": self.encoder.source, "sha256": self.encoder.sha256},
        }

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        encoder_source: str | None = None,
        map_location: str | torch.device = "cpu",
        use_ema: bool = True,
    ) -> "Whisfusion":
        """Rebuild a trained model from a training checkpoint.

        Args:
            encoder_source: where the frozen encoder's weights are on this machine, when not at
                the path recorded in the checkpoint. Its hash must match the recorded one.
            use_ema: load the EMA weights of the decoder when the checkpoint has them.
        Raises:
            CheckpointError: missing / unreadable file, not a whisfusion checkpoint, encoder
                source missing or with a different hash.
        """
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
        payload = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
        if payload is None:
            raise CheckpointError(f"{path}: not a whisfusion checkpoint (no '{CHECKPOINT_KEY}' entry)")
        cfg = config_from_dict(payload["config"], origin=f"{path} (config)")
        tokenizer = Tokenizer.from_bytes(payload["tokenizer"].numpy().tobytes())
        recorded = payload["encoder"]
        cfg.model.encoder.source = encoder_source or recorded["source"]
        cfg.model.encoder.sha256 = recorded["sha256"]
        try:
            encoder = FrozenWhisperEncoder.from_config(cfg.model.encoder)
        except FileNotFoundError as err:
            raise CheckpointError(
                f"{path}: the frozen encoder it was trained with ({recorded['source']}) is not "
                f"available here ({err}); pass encoder_source= / --encoder with its location"
            ) from None
        except ValueError as err:
            raise CheckpointError(f"{path}: encoder does not match the checkpoint: {err}") from None
        model = cls(cfg, tokenizer, encoder)
        state = ckpt.get("ema_state_dict") if use_ema else None
        state = state or {
            k[len("model.decoder."):]: v
            for k, v in ckpt["state_dict"].items()
            if k.startswith("model.decoder.")
        }
        try:
            model.decoder.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: decoder weights do not fit its config: {err}") from None
        return model.to(map_location).eval()
