"""Whisper's autoregressive decoder as users run it: Hugging Face transformers, greedy, KV cache.

The loop below is what `generate` does for greedy search minus its logits processors and
stopping checks: one forward per token, each feeding only the newest token and reusing the
self-attention keys/values of the tokens before it and the cross-attention keys/values of the
audio (computed once, at the first forward). It is forced to emit exactly N tokens (no early
stop at EOS), so every decoder is timed for the same transcript length; leaving out
`generate`'s per-step bookkeeping makes it a lower bound on what `generate` would cost.
"""

from __future__ import annotations

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from bench.profiles import ARShape

# <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>: Whisper's usual 4-token prompt
# (multilingual ids, valid in every Whisper vocabulary).
PROMPT = (50258, 50259, 50359, 50363)


def build_whisper(
    shape: ARShape, device: torch.device, encoder_layers: int = 1
) -> WhisperForConditionalGeneration:
    """A randomly initialised Whisper with the decoder of `shape`; float32, eval mode.

    The encoder has `encoder_layers` blocks: one by default, for timing the decoder alone on
    precomputed features (the encoder is not run, so only the decoder's shape matters).
    """
    config = WhisperConfig(
        vocab_size=shape.vocab,
        num_mel_bins=shape.n_mels,
        d_model=shape.width,
        decoder_layers=shape.layers,
        decoder_attention_heads=shape.heads,
        decoder_ffn_dim=shape.ffn,
        encoder_layers=encoder_layers,
        encoder_attention_heads=shape.heads,
        encoder_ffn_dim=shape.ffn,
        max_source_positions=1500,
        max_target_positions=448,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = WhisperForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    return model.eval()


@torch.inference_mode()
def greedy_tokens(
    model: WhisperForConditionalGeneration, features: torch.Tensor, n_tokens: int
) -> torch.Tensor:
    """Exactly `n_tokens` greedy tokens per utterance.

    Args:
        features: (B, S, width) encoder output.
    Returns:
        (B, n_tokens) long token ids.
    """
    if n_tokens < 1:
        raise ValueError(f"need at least one token, got {n_tokens}")
    batch = features.shape[0]
    encoder_outputs = (features,)
    step_input = torch.tensor(PROMPT, device=features.device).expand(batch, -1)
    cache = None
    tokens = []
    for _ in range(n_tokens):
        out = model(
            encoder_outputs=encoder_outputs,
            decoder_input_ids=step_input,
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        step_input = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        tokens.append(step_input)
    return torch.cat(tokens, dim=1)
