"""Build the text decoder a config names (`model.decoder.kind`); each is a `Denoiser`."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from whisfusion.config import DecoderConfig, RunConfig
from whisfusion.decoder import DiffusionDecoder
from whisfusion.denoiser import Denoiser
from whisfusion.encoder import FrozenWhisperEncoder
from whisfusion.prior import AlignmentPrior, check_alignment_config
from whisfusion.tokenizer import Tokenizer
from whisfusion.whisper_tokenizer import WhisperTokenizer
from whisfusion.whisper_weights import build_whisper_decoder

# `model.decoder.kind` values: "diffusion" is the paper's decoder, trained from scratch;
# "whisper" starts from the pretrained decoder of the encoder's own Whisper checkpoint.
DECODER_KINDS = ("diffusion", "whisper")


def build_decoder(
    cfg: DecoderConfig, tokenizer: Tokenizer, encoder: FrozenWhisperEncoder, max_len: int = 448
) -> Denoiser:
    """The decoder of `cfg.kind` for `tokenizer`'s vocabulary over `encoder`'s features.

    Args:
        max_len: the longest canvas (model.canvas.max_len).
    Raises:
        ValueError: an unknown kind, or settings that do not fit it.
    """
    if cfg.kind == "diffusion":
        if cfg.attention_anneal_steps:
            raise ValueError(
                "model.decoder.attention_anneal_steps adapts Whisper's causal decoder: it needs "
                "model.decoder.kind whisper"
            )
        decoder = diffusion_decoder(cfg, tokenizer.vocab_size, encoder.width, max_len)
    elif cfg.kind == "whisper":
        decoder = build_whisper_decoder(cfg, tokenizer, encoder, max_len)
    else:
        raise ValueError(
            f"model.decoder.kind must be one of {', '.join(DECODER_KINDS)}; got '{cfg.kind}'"
        )
    return freeze_parameters(decoder, cfg.freeze)


def freeze_parameters(module: nn.Module, patterns: Sequence[str]) -> nn.Module:
    """`module` with the parameters whose names match any of `patterns` (fnmatch) frozen.

    Raises:
        ValueError: a pattern that matches no parameter (a typo would freeze nothing).
    """
    names = [name for name, _ in module.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ValueError(
                f"model.decoder.freeze: '{pattern}' matches no decoder parameter "
                f"(names look like '{names[-1]}')"
            )
    for name, param in module.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            param.requires_grad_(False)
    return module


def build_tokenizer(cfg: RunConfig, encoder: FrozenWhisperEncoder) -> Tokenizer | WhisperTokenizer:
    """The tokenizer the decoder kind writes with: Whisper's own, beside the encoder's weights,
    for `model.decoder.kind: whisper`; else the SentencePiece model at `model.tokenizer.path`."""
    if cfg.model.decoder.kind == "whisper":
        return WhisperTokenizer.from_weights(encoder.source, cfg.model.tokenizer.languages)
    return Tokenizer.from_file(cfg.model.tokenizer.path)


def diffusion_decoder(
    cfg: DecoderConfig, vocab_size: int, enc_width: int, max_len: int = 448
) -> DiffusionDecoder:
    """The paper's decoder over `vocab_size` tokens and `enc_width`-wide encoder frames, with
    the CTC alignment prior when `cfg.align_hidden` > 0."""
    check_alignment_config(cfg)
    prior = None
    if cfg.align_hidden:
        prior = AlignmentPrior(cfg, vocab_size, enc_width * cfg.frame_stack)
    return DiffusionDecoder(cfg, vocab_size, enc_width, max_len, prior)
