"""The CTC alignment prior: an optional extension of the diffusion decoder (`DecoderPrior`).

Not the paper's model: it carries small-data runs (see whisfusion.alignment for the idea). A
small CTC head reads the decoder's frames once per utterance (`read`); from its reading the
prior then
- biases cross-attention toward the frames of each canvas position's token, with a learned
  per-head, per-layer sharpness (`cross_masks`);
- with `align_token_memory`, adds each frame's expected token embedding to the cross-attention
  keys/values (`key_values`): a position can copy what its frames were heard as;
- with `align_token_input`, adds to each canvas position's input the embedding of the token the
  head hears there (`embed_input`), so decoding from an all-[MASK] canvas starts from it;
- with `align_best_path`, places the frames at whole canvas positions (the head's best path),
  and with a logit weight > 0 adds the head's log-probabilities at each position to the logits
  (`fuse_logits`, a product of experts): the decoder learns a correction to the head's reading.
The head also trains with its own CTC loss (`losses`), and can be read alone (`greedy`,
`decode.method ctc`). Everything the head produces reaches the decoder detached: only the CTC
loss trains the head, and the decoder cannot bend the prior to suit itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from whisfusion import alignment
from whisfusion.alignment import AlignmentHead
from whisfusion.canvas import add_per_utterance, per_utterance_at
from whisfusion.config import DecoderConfig
from whisfusion.language_vocab import restrict_log_probs

# Kernel width (canvas positions) with which the head's log-probabilities reach the logits:
# a neighbour gets exp(-8) of them, so each position reads its own token alone.
FUSION_WIDTH = 0.25


@dataclass(frozen=True)
class HeadReading:
    """How decoding reads the alignment head; the defaults read it as training does.

    allowed: (N, V) bool, the tokens each utterance may contain (its language's vocabulary,
        see whisfusion.language_vocab), or None for every token.
    blank_penalty: taken off the blank's log-probability (`alignment.penalize_blank`).
    logit_weight: weight of the head's log-probabilities in the logits, None = the trained
        `align_logit_weight` (decoding may lean on the head more than training).
    """

    allowed: torch.Tensor | None = None
    blank_penalty: float = 0.0
    logit_weight: float | None = None


AS_TRAINED = HeadReading()


@dataclass
class PriorState:
    """What the prior read from N utterances' S frames (`AlignmentPrior.read`).

    log_probs: (N, S, V + 1) the head's CTC log-probabilities as read (for its loss, and,
        detached, for the logit fusion).
    valid: (N, S) bool, the frames covering real audio.
    token_start: (N, S) probability that each frame starts a token (1.0 or 0.0 with
        `align_best_path`).
    key_pos: (N, S) canvas position of each frame (`alignment.expected_positions`).
    token_memory: (N, S, D) each frame's expected token embedding, or None when neither token
        memory nor token input reads it.
    logit_weight: weight of the head's log-probabilities in the logits.
    """

    log_probs: torch.Tensor
    valid: torch.Tensor
    token_start: torch.Tensor
    key_pos: torch.Tensor
    token_memory: torch.Tensor | None
    logit_weight: float


def check_alignment_config(cfg: DecoderConfig) -> None:
    """Raise ValueError when `model.decoder.align_*` keys contradict each other."""
    needs_head = ("align_context", "align_token_memory", "align_token_input", "align_best_path")
    for flag in needs_head:
        if getattr(cfg, flag) and not cfg.align_hidden:
            raise ValueError(f"model.decoder.{flag} needs the alignment head: set align_hidden > 0")
    if cfg.align_logit_weight and not cfg.align_best_path:
        raise ValueError(
            "model.decoder.align_logit_weight reads the head's tokens at whole canvas "
            "positions: set align_best_path"
        )
    if cfg.align_context < 0 or (cfg.align_context and cfg.align_context % 2 == 0):
        raise ValueError(
            "model.decoder.align_context must be 0 or an odd number of frames, "
            f"got {cfg.align_context}"
        )


class AlignmentPrior(nn.Module):
    """The decoder's CTC alignment prior (module docstring), built from `model.decoder.align_*`.

    Args:
        cfg: the decoder config (`align_*` keys, layers, width, heads).
        vocab_size: V; the head's blank takes the id V.
        frame_width: width of the frames it reads (the encoder width times `frame_stack`).
    """

    def __init__(self, cfg: DecoderConfig, vocab_size: int, frame_width: int):
        super().__init__()
        check_alignment_config(cfg)
        self.cfg = cfg
        self.head = AlignmentHead(frame_width, cfg.align_hidden, vocab_size, cfg.align_context)
        # per layer: the token memory's projection into that layer's keys/values
        self.kv_token = (
            nn.ModuleList(
                nn.Linear(cfg.width, 2 * cfg.width, bias=False) for _ in range(cfg.layers)
            )
            if cfg.align_token_memory
            else None
        )
        if self.kv_token is not None:
            for layer in self.kv_token:
                nn.init.normal_(layer.weight, std=0.02)  # as the decoder's own projections
        # Per layer and head, the sharpness of the cross-attention bias, through softplus so it
        # stays >= 0. Heads start from widths of about 1 to 10 canvas positions, so some look
        # closely and some around; training sets them.
        self.sharpness = nn.ParameterList(
            nn.Parameter(torch.linspace(0.0, -4.5, cfg.heads).exp().expm1().log())
            for _ in range(cfg.layers)
        )

    @property
    def blank(self) -> int:
        return self.head.blank

    def log_probs(
        self, frames: torch.Tensor, valid: torch.Tensor, reading: HeadReading = AS_TRAINED
    ) -> torch.Tensor:
        """frames (N, S, E'), valid (N, S) -> the (N, S, V + 1) float32 CTC log-probabilities
        `reading` reads (blank penalty, allowed tokens)."""
        log_probs = alignment.penalize_blank(
            self.head(frames, valid), reading.blank_penalty, self.blank
        )
        if reading.allowed is None:
            return log_probs
        return restrict_log_probs(log_probs, reading.allowed)

    def greedy(
        self, frames: torch.Tensor, valid: torch.Tensor, reading: HeadReading = AS_TRAINED
    ) -> list[list[int]]:
        """Best-path CTC reading of the head: per utterance its token ids."""
        return alignment.greedy_ctc(self.log_probs(frames, valid, reading), valid, self.blank)

    def read(
        self,
        frames: torch.Tensor,
        valid: torch.Tensor,
        embed: torch.Tensor,
        reading: HeadReading | None = None,
    ) -> PriorState:
        """frames (N, S, E'), valid (N, S), embed (V, D) the decoder's token embeddings."""
        reading = reading or AS_TRAINED
        log_probs = self.log_probs(frames, valid, reading)
        heard = log_probs.detach()
        starts = (
            alignment.best_path_token_start
            if self.cfg.align_best_path
            else alignment.new_token_probability
        )
        start = starts(heard, valid, self.blank)
        memory = None
        if self.cfg.align_token_memory or self.cfg.align_token_input:
            memory = alignment.expected_embedding(heard, embed)
        weight = reading.logit_weight
        weight = self.cfg.align_logit_weight if weight is None else weight
        return PriorState(
            log_probs, valid, start, alignment.expected_positions(start), memory, weight
        )

    def key_values(self, kv: list[torch.Tensor], state: PriorState) -> list[torch.Tensor]:
        """Per layer (N, S, 2D): plus the token memory's projection (`align_token_memory`)."""
        if self.kv_token is None:
            return kv
        return [x + proj(state.token_memory) for x, proj in zip(kv, self.kv_token, strict=True)]

    def embed_input(self, x: torch.Tensor, state: PriorState) -> torch.Tensor:
        """(N*K, L, D): plus the embedding of the token heard at each position
        (`align_token_input`)."""
        if not self.cfg.align_token_input:
            return x
        heard = alignment.aligned_token_embedding(
            state.token_start, state.key_pos, state.token_memory, x.shape[1]
        )
        return add_per_utterance(x, heard)

    def cross_masks(
        self, key_mask: torch.Tensor, length: int, rows: int, state: PriorState
    ) -> list[torch.Tensor]:
        """Per layer (N, H, K*L, S) float: -sharpness_h (i - key_pos_j)^2, -inf on padding."""
        # query row k*L + i sits at canvas position i
        query_pos = torch.arange(length, device=key_mask.device).repeat(rows // key_mask.shape[0])
        sq_distance = alignment.squared_distance(query_pos, state.key_pos)
        return [
            alignment.alignment_bias(sq_distance, F.softplus(sharp)).masked_fill(
                ~key_mask, float("-inf")
            )
            for sharp in self.sharpness
        ]

    def fuse_logits(
        self, logits: torch.Tensor, state: PriorState, where: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (N*K, L, V), or (P, V) at `where` ((N*K, L) bool, as the decoder returns
        them): plus the weighted log-probabilities of the token the head reads at each position
        (`align_logit_weight`, or the reading's weight)."""
        if not state.logit_weight:
            return logits
        vocab = logits.shape[-1]
        heard = alignment.aligned_token_embedding(
            state.token_start,
            state.key_pos,
            state.log_probs.detach()[..., :vocab],
            logits.shape[1] if where is None else where.shape[1],
            FUSION_WIDTH,
        )
        if where is None:
            return add_per_utterance(logits, state.logit_weight * heard)
        return logits + state.logit_weight * per_utterance_at(heard, where)

    def losses(
        self, state: PriorState, tokens: torch.Tensor, canvas_valid: torch.Tensor, eos_id: int
    ) -> dict[str, tuple[torch.Tensor, float]]:
        """The head's CTC loss on target canvases tokens (B, L), canvas_valid (B, L), with its
        weight in the training loss (`align_ctc_weight`)."""
        targets = alignment.ctc_targets(tokens, canvas_valid, eos_id)
        loss = alignment.ctc_loss(state.log_probs, state.valid, targets, self.blank)
        return {"ctc_loss": (loss, self.cfg.align_ctc_weight)}
