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
        check_alignment_config(cfg)
        prior = None
        if cfg.align_hidden:
            prior = AlignmentPrior(cfg, tokenizer.vocab_size, encoder.width * cfg.frame_stack)
        return DiffusionDecoder(cfg, tokenizer.vocab_size, encoder.width, max_len, prior)
    if cfg.kind == "whisper":
        raise ValueError(
            "model.decoder.kind 'whisper' (a decoder started from Whisper's own) is not "
            "available in this version; use 'diffusion'"
        )
    raise ValueError(
        f"model.decoder.kind must be one of {', '.join(DECODER_KINDS)}; got '{cfg.kind}'"
    )
