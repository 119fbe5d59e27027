"""Build the text decoder a config names (`model.decoder.kind`); each is a `Denoiser`."""

from __future__ import annotations

from whisfusion.config import DecoderConfig
from whisfusion.decoder import DiffusionDecoder
from whisfusion.denoiser import Denoiser
from whisfusion.encoder import FrozenWhisperEncoder
from whisfusion.prior import AlignmentPrior, check_alignment_config
from whisfusion.tokenizer import Tokenizer

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
        return diffusion_decoder(cfg, tokenizer.vocab_size, encoder.width, max_len)
    if cfg.kind == "whisper":
        raise ValueError(
            "model.decoder.kind 'whisper' (a decoder started from Whisper's own) is not "
            "available in this version; use 'diffusion'"
        )
    raise ValueError(
        f"model.decoder.kind must be one of {', '.join(DECODER_KINDS)}; got '{cfg.kind}'"
    )


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
