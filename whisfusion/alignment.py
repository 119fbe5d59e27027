"""CTC alignment prior: tells each canvas position which encoder frames hold its token.

A non-autoregressive decoder starts from an all-[MASK] canvas, so position i has to find "the
i-th token" in the audio from its position alone; with little data it memorizes sentences
instead. The alignment head is a small CTC classifier on the frozen encoder output. From its
frame posteriors, `expected_positions` counts how many tokens are expected to have started up to
each frame; cross-attention then adds `alignment_bias`, a per-head Gaussian in (canvas position -
expected position), so position i looks first at the frames of the i-th token. Heads learn their
own width, so a head can also widen to attend anywhere.

`whisfusion.prior.AlignmentPrior` puts these pieces into the decoder. All functions here are pure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AlignmentHead(nn.Module):
    """Encoder frames -> CTC log-probabilities over the text tokens plus a blank.

    A two-layer MLP per frame; with `context` (odd) > 0, a residual depthwise convolution over
    that many frames on its hidden layer lets each frame's label also read its neighbours, at
    one multiply per channel and tap. The blank takes the index `vocab_size` (the [MASK] id,
    which is never a CTC label).
    """

    def __init__(self, enc_width: int, hidden: int, vocab_size: int, context: int = 0):
        super().__init__()
        # one Sequential, as checkpoints name it (align.proj.0, align.proj.2); `forward` calls
        # it in parts so that the context sits on the hidden layer
        self.proj = nn.Sequential(
            nn.Linear(enc_width, hidden), nn.GELU(), nn.Linear(hidden, vocab_size + 1)
        )
        self.context = (
            nn.Conv1d(hidden, hidden, context, padding=context // 2, groups=hidden)
            if context
            else None
        )

    @property
    def blank(self) -> int:
        return self.proj[-1].out_features - 1

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """features (N, S, E), valid (N, S) bool -> log-probabilities (N, S, V + 1), float32.

        A valid frame's output does not depend on the invalid frames (batch padding)."""
        hidden = self.proj[0](features)
        if self.context is not None:
            # zeroed first: a padding frame's hidden layer is the first layer's bias, not 0
            near = (hidden * valid.unsqueeze(-1)).transpose(1, 2)
            hidden = hidden + self.context(near).transpose(1, 2)
        return F.log_softmax(self.proj[2](self.proj[1](hidden)).float(), dim=-1)


def penalize_blank(log_probs: torch.Tensor, penalty: float, blank: int) -> torch.Tensor:
    """CTC log-probabilities with `penalty` taken off the blank's, renormalized.

    A CTC head trained on little data is peaky: the blank wins most frames, and a token heard
    with moderate confidence loses to it, so the reading drops tokens (most of the demo's
    errors are deletions). A blank penalty at decoding trades deletions for insertions, as in
    icefall's CTC decoding; the ratios among the other labels stay the same.

    Args:
        log_probs: (N, S, V + 1); penalty: >= 0, 0 returns `log_probs` itself.
    """
    if not penalty:
        return log_probs
    shift = torch.zeros(log_probs.shape[-1], dtype=log_probs.dtype, device=log_probs.device)
    shift[blank] = penalty
    return F.log_softmax(log_probs - shift, dim=-1)


def new_token_probability(log_probs: torch.Tensor, valid: torch.Tensor, blank: int) -> torch.Tensor:
    """(N, S) probability that frame j starts a new CTC token, 0 on invalid frames.

    A new token starts where the frame's label is not blank and differs from the previous
    frame's (CTC collapses repeats). Frames are treated as independent:
    P = (1 - p_blank[j]) - sum over labels v != blank of p_j(v) p_{j-1}(v).

    Args:
        log_probs: (N, S, V + 1) CTC log-probabilities; valid: (N, S) bool.
    """
    probs = log_probs.exp()
    previous = F.pad(probs[:, :-1], (0, 0, 1, 0))  # frame -1 emits nothing
    # same label on both frames, blank excluded
    repeat = (probs * previous).sum(dim=-1) - probs[..., blank] * previous[..., blank]
    emit = (1.0 - probs[..., blank] - repeat).clamp(min=0.0)
    return emit * valid


def best_path_token_start(log_probs: torch.Tensor, valid: torch.Tensor, blank: int) -> torch.Tensor:
    """(N, S) 1.0 on the frames where the best CTC path starts a token, else 0.0.

    The hard counterpart of `new_token_probability`: the frame's most likely label is not
    blank and differs from the previous frame's most likely label (as `greedy_ctc` collapses
    the path), so the counts of `expected_positions` become whole canvas positions and the
    i-th token `greedy_ctc` reads starts exactly where the count reaches i.

    Args:
        log_probs: (N, S, V + 1) CTC log-probabilities; valid: (N, S) bool.
    """
    return _best_path(log_probs, valid, blank)[1].to(log_probs.dtype)


def _best_path(
    log_probs: torch.Tensor, valid: torch.Tensor, blank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S) most likely label of each frame, and (N, S) bool: the frame starts a token."""
    best = log_probs.argmax(dim=-1)
    previous = F.pad(best[:, :-1], (1, 0), value=blank)  # frame -1 emits nothing
    return best, (best != blank) & (best != previous) & valid


def expected_positions(token_start: torch.Tensor) -> torch.Tensor:
    """(N, S) expected number of tokens started up to and including each frame.

    On a canvas `[<|lang|>] t1 .. tn <|eos|> ...` token t_k sits at position k, and the frames
    where it is spoken have an expected count near k, so the count is a canvas position.

    Args:
        token_start: (N, S) `new_token_probability` (or `best_path_token_start`) of each frame.
    """
    return token_start.cumsum(dim=1)


def expected_embedding(log_probs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(N, S, D) expected token embedding of each frame, blank counting as the zero vector.

    Args:
        log_probs: (N, S, V + 1) CTC log-probabilities, the blank last.
        table: (V, D) token embeddings.
    """
    return log_probs[..., :-1].exp().to(table.dtype) @ table


def aligned_token_embedding(
    token_start: torch.Tensor,
    position: torch.Tensor,
    frame_embedding: torch.Tensor,
    length: int,
    width: float = 0.5,
) -> torch.Tensor:
    """(N, L, D) per canvas position, the embedding of the token the CTC head hears there.

    Frame j starts a token with probability s_j (`new_token_probability`, or 0 / 1 from
    `best_path_token_start`), at canvas position c_j (`expected_positions`); position i sums
    s_j exp(-(i - c_j)^2 / 2 width^2) e_j over frames. e_j is any per-frame vector: the expected
    embedding E^T p_j for the decoder's input, the head's log-probabilities for its logits.
    Positions no token reaches (the EOS padding) get about zero.

    Args:
        token_start: (N, S) s_j.
        position: (N, S) c_j, from `expected_positions` of the same s_j.
        frame_embedding: (N, S, D) e_j, e.g. `expected_embedding` of the same log-probabilities.
        length: canvas positions L.
    """
    canvas = torch.arange(length, device=position.device, dtype=position.dtype)
    kernel = torch.exp(-(canvas[None, :, None] - position[:, None, :]).square() / (2 * width**2))
    return (kernel * token_start[:, None, :]).to(frame_embedding.dtype) @ frame_embedding


def squared_distance(query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
    """(N, Q, S) squared distance (i - key_pos_j)^2 between canvas positions.

    Args:
        query_pos: (Q,) canvas position of each query.
        key_pos: (N, S) expected canvas position of each encoder frame.
    """
    return (query_pos.float()[None, :, None] - key_pos.float()[:, None, :]).square()


def alignment_bias(sq_distance: torch.Tensor, sharpness: torch.Tensor) -> torch.Tensor:
    """Additive cross-attention bias -sharpness_h * (i - key_pos_j)^2.

    Args:
        sq_distance: (N, Q, S) from `squared_distance`.
        sharpness: (H,) non-negative, one per head (0 = no prior for that head).
    Returns:
        (N, H, Q, S) float bias.
    """
    return -sharpness.float()[None, :, None, None] * sq_distance[:, None]


def ctc_loss(
    log_probs: torch.Tensor, valid: torch.Tensor, targets: list[list[int]], blank: int
) -> torch.Tensor:
    """Mean CTC loss per target token of a batch.

    Args:
        log_probs: (N, S, V + 1); valid: (N, S) bool, a prefix of each row.
        targets: the text token ids of each utterance (no language token, no EOS).
    """
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
    target_lens = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
    loss = F.ctc_loss(
        log_probs.transpose(0, 1),
        flat.to(log_probs.device),
        valid.sum(dim=1).cpu(),
        target_lens,
        blank=blank,
        reduction="sum",
        zero_infinity=True,  # a transcript too long for its frames adds nothing, not NaN
    )
    return loss / target_lens.sum().clamp(min=1).to(loss.device)


def greedy_ctc(log_probs: torch.Tensor, valid: torch.Tensor, blank: int) -> list[list[int]]:
    """Best-path CTC decoding: per utterance the token ids after collapsing repeats and blanks
    (the labels of the frames where `best_path_token_start` starts a token)."""
    best, start = _best_path(log_probs, valid, blank)
    return [row[keep].tolist() for row, keep in zip(best.cpu(), start.cpu(), strict=True)]


def ctc_targets(tokens: torch.Tensor, valid: torch.Tensor, eos_id: int) -> list[list[int]]:
    """The text token ids of each target canvas `[<|lang|>] t1 .. tn <|eos|> ...`.

    Args:
        tokens: (B, L) target canvases; valid: (B, L) bool.
    Returns:
        per row the ids after the language token, EOS padding removed.
    """
    text = tokens[:, 1:].cpu()
    keep = valid[:, 1:].cpu() & (text != eos_id)
    return [row[k].tolist() for row, k in zip(text, keep, strict=True)]
