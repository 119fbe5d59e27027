"""The whisfusion diffusion decoder run as `Whisfusion.decode_features` runs it, minus the text.

Timed: the cross-attention keys/values of the audio (once per utterance) and `pdd_decode` over
T steps with K candidate rows per utterance, the canvas length given by the canvas rule. Not
timed, on either side of the comparison: detokenizing and choosing among the K candidates.
"""

from __future__ import annotations

import dataclasses

import torch

from bench.profiles import PDDShape
from whisfusion.canvas import canvas_length
from whisfusion.config import CanvasConfig, DecodeConfig
from whisfusion.decoder import DiffusionDecoder
from whisfusion.decoders import diffusion_decoder
from whisfusion.kv_reuse import ReusedKeys
from whisfusion.pdd import canvas_for, options_from_config, pdd_decode

# whisfusion tokenizers fix <|eos|> at id 1 (the Tokenizer refuses any other).
EOS_ID = 1


def canvas_for_tokens(n_tokens: int, cfg: CanvasConfig | None = None) -> int:
    """The canvas length L the canvas rule gives a clip whose transcript bound is `n_tokens`:
    clip(n_tokens + margin), rounded up to a multiple of 8 (duration x r_max = n_tokens)."""
    cfg = dataclasses.replace(cfg or CanvasConfig(), r_max=1.0)
    return canvas_length(float(n_tokens), cfg)


def build_diffusion_decoder(
    shape: PDDShape, enc_width: int, device: torch.device
) -> DiffusionDecoder:
    """A randomly initialised diffusion decoder of `shape` (random weights cost what trained
    ones cost); float32, eval mode."""
    torch.manual_seed(0)
    with torch.device(device):
        decoder = diffusion_decoder(shape.decoder, shape.vocab, enc_width, CanvasConfig().max_len)
    return decoder.eval()


@torch.inference_mode()
def pdd_tokens(
    decoder: DiffusionDecoder,
    features: torch.Tensor,
    valid: torch.Tensor,
    length: int,
    steps: int,
    *,
    candidates: int,
    generator: torch.Generator,
    kv_refresh: int = 1,
) -> torch.Tensor:
    """K candidate canvases per utterance after T steps (no language given: all-[MASK] start).

    Args:
        features: (B, S, E) encoder output; valid: (B, S) bool.
        length: canvas length L.
        kv_refresh: self-attention keys recomputed every this many steps (`decode.kv_refresh`).
    Returns:
        (B, K, L) token ids.
    """
    batch = features.shape[0]
    canvas, canvas_valid = canvas_for([length] * batch, decoder.mask_id, EOS_ID)
    canvas, canvas_valid = canvas.to(features.device), canvas_valid.to(features.device)
    row_valid = canvas_valid.repeat_interleave(candidates, dim=0)
    decode = dataclasses.replace(DecodeConfig(), steps=steps, candidates=candidates)
    cache = decoder.cross_cache(features, valid)
    if kv_refresh > 1:
        cache.reuse = ReusedKeys(kv_refresh)
    result = pdd_decode(
        lambda tokens, cache, where: decoder(tokens, cache, row_valid, where),
        cache,
        canvas,
        canvas_valid,
        mask_id=decoder.mask_id,
        eos_id=EOS_ID,
        generator=generator,
        **options_from_config(decode),
    )
    return result.tokens
