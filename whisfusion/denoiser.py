"""The decoder interface: what the sampler, validation, transcription and the CLI may ask of it.

Any text decoder that denoises a masked canvas conditioned on audio fits beside the paper's
(`whisfusion.decoder.DiffusionDecoder`); `whisfusion.decoders.build_decoder` builds the one a
config names (`model.decoder.kind`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Denoiser(Protocol):
    # classes of the output head; [MASK] is not among them
    vocab_size: int
    # id of [MASK] on the canvas (== vocab_size)
    mask_id: int

    def cross_cache(self, features: Tensor, valid: Tensor) -> Any:
        """features (N, S, E) frozen encoder output, valid (N, S) bool -> an opaque cache of N
        utterances (cross-attention keys/values computed once, reused for every step and every
        one of the K candidate rows)."""

    def forward(
        self,
        tokens: Tensor,
        cache: Any,
        canvas_valid: Tensor | None = None,
        where: Tensor | None = None,
    ) -> Tensor:
        """tokens (N*K, L) canvas ids, utterance-major (row n*K + k is candidate k of utterance
        n), [MASK] = mask_id; canvas_valid (N*K, L) bool -> float logits of the clean token at
        each position: (N*K, L, vocab_size) for every position, or, with `where` ((N*K, L)
        bool), (P, vocab_size) at its P positions in row-major order, `forward(...)[where]`
        without the rest (the output layer is most of a large-vocabulary decoder's work, and
        a (rows, L, V) tensor most of its memory)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        """`forward` (an `nn.Module` call)."""


def check_canvas(rows: int, length: int, utterances: int, longest: int) -> None:
    """Refuse canvases a decoder cannot read: `rows` x `length` ids over a cache of `utterances`,
    at most `longest` positions (model.canvas.max_len).

    Raises:
        ValueError: the rows do not group onto the utterances, or the canvas is too long.
    """
    if rows % utterances:
        raise ValueError(f"{rows} canvas rows do not group onto {utterances} utterances")
    if length > longest:
        raise ValueError(
            f"canvas of {length} positions is longer than the decoder's maximum {longest} "
            "(model.canvas.max_len)"
        )
