"""Whisper-base's autoregressive decoder in CTranslate2, the engine under faster-whisper.

The same forced-length greedy decoding as `bench.ar`, on the same encoder output (CTranslate2
takes encoder features in place of a log-mel), with the real Whisper-base weights: the AR
decoder CPU users actually run, in float32 (the precision of the other decoders) and int8
(faster-whisper's usual CPU setting).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.ar import PROMPT
from bench.profiles import Profile
from bench.runner import measure, warm_up

COMPUTE_TYPES = ("float32", "int8")
# <|endoftext|>: suppressed, so that every run emits exactly N tokens.
END_OF_TEXT = 50257


def ct2_tokens(model, encoded, batch: int, n_tokens: int) -> list[list[int]]:
    """Exactly `n_tokens` greedy tokens for each of the `batch` encoded utterances."""
    results = model.generate(
        encoded,
        [list(PROMPT)] * batch,
        beam_size=1,
        # Whisper samples at most half of max_length tokens (openai/whisper's sample_len is
        # n_text_ctx // 2, and CTranslate2 follows it)
        max_length=2 * n_tokens,
        suppress_tokens=[-1, END_OF_TEXT],
        suppress_blank=False,
    )
    ids = [r.sequences_ids[0] for r in results]
    if any(len(x) != n_tokens for x in ids):
        raise RuntimeError(
            f"CTranslate2 returned {[len(x) for x in ids]} tokens, {n_tokens} were forced"
        )
    return ids


def time_ct2_decoders(
    profile: Profile, model_dir: Path, features: torch.Tensor, threads: int
) -> list[dict]:
    """Each compute type, batch size and transcript length N; features (1, S, width)."""
    import ctranslate2  # installed with faster-whisper

    device = torch.device("cpu")
    rows = []
    for compute_type in COMPUTE_TYPES:
        model = ctranslate2.models.Whisper(
            str(model_dir), device="cpu", compute_type=compute_type, intra_threads=threads
        )
        for batch in profile.batches:
            array = np.ascontiguousarray(features.cpu().expand(batch, -1, -1).numpy())
            encoded = ctranslate2.StorageView.from_array(array)  # shares `array`'s memory
            decode = partial(ct2_tokens, model, encoded, batch)
            warm_up(profile, device, partial(decode, min(profile.lengths)))
            for n in profile.lengths:
                rows.append(
                    measure(
                        profile,
                        device,
                        partial(decode, n),
                        family="ar",
                        decoder=f"{profile.encoder.name} ct2 {compute_type}",
                        batch=batch,
                        n_tokens=n,
                    )
                )
    return rows
