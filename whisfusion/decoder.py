"""The diffusion decoder: a bidirectional Transformer over the text canvas, conditioned on audio.

Each block: pre-RMSNorm self-attention with RoPE (bidirectional: every canvas position sees every
other), pre-RMSNorm cross-attention to the frozen encoder output, pre-RMSNorm SwiGLU MLP. No
biases, no timestep input (time-agnostic, as in LLaDA / SMDM). The embedding table has one extra
row for [MASK] (id = vocab_size); the output head has vocab_size classes, so [MASK] can never be
predicted.

Positions: RoPE in self-attention, plus a learned absolute position embedding added to the input.
RoPE alone cannot tell positions apart on an all-[MASK] canvas (every value vector is the same,
so every weighted sum is too), and decoding starts from exactly that canvas; the absolute
embedding breaks the symmetry from the first step.

Optional alignment prior (`align_hidden` > 0, see whisfusion.alignment): a small CTC head on the
encoder output estimates which canvas position each frame belongs to, and cross-attention adds a
per-head Gaussian bias toward those frames. It costs a dense attention mask (the fused SDPA
kernels without a mask no longer apply) and is meant for small corpora. With
`align_token_memory`, cross-attention keys/values also read each frame's expected token
embedding under the head's (detached) posteriors, E^T p_j, through the decoder's own embedding
table: a position can copy what its frames were heard as. With `align_token_input`, each canvas
position's input adds the embedding of the token the head hears at that position
(`aligned_token_embedding`), so decoding from an all-[MASK] canvas starts from the frames' reading.
With `align_best_path`, the frames' canvas positions come from the head's best path (whole
numbers), and `align_logit_weight` > 0 adds the head's log-probabilities at each position to the
logits (a product of experts): the decoder learns a correction to what the head reads.

With `frame_stack` k > 1, each k adjacent encoder frames are concatenated into one frame
(`stack_frames`) before the alignment head and cross-attention read them: Whisper's 20 ms frames
are several to a token, and the work done per frame (the head's output layer above all) is most
of a small decoder's training step.

Cross-attention keys/values depend on the audio only: `cross_cache` computes them once per
utterance, and `forward` reuses them for any number of candidate rows. K candidate rows of one
utterance are folded into the query length of a single attention call (queries never interact in
cross-attention, so this is exact), which shares the cached keys without copying them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from whisfusion.alignment import (
    AS_TRAINED,
    AlignmentHead,
    HeadReading,
    aligned_token_embedding,
    alignment_bias,
    best_path_token_start,
    expected_embedding,
    expected_positions,
    new_token_probability,
    squared_distance,
)
from whisfusion.config import DecoderConfig
from whisfusion.language_vocab import blocked_bias

# Kernel width (canvas positions) with which the head's log-probabilities reach the logits:
# a neighbour gets exp(-8) of them, so each position reads its own token alone.
FUSION_WIDTH = 0.25


def stack_frames(
    features: torch.Tensor, valid: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate each k adjacent encoder frames into one.

    Frames outside `valid` are zeroed first, so an utterance reads the same whether its padding
    holds the encoder's output on silence or the feature cache's zeros, and whatever its batch.

    Args:
        features: (N, S, E); valid: (N, S) bool; k >= 1.
    Returns:
        (N, ceil(S / k), k * E) features and (N, ceil(S / k)) bool, True where any of the k
        frames is valid.
    """
    if k == 1:
        return features, valid
    n, length, width = features.shape
    pad = -length % k
    kept = features * valid[..., None].to(features.dtype)
    stacked = F.pad(kept, (0, 0, 0, pad)).reshape(n, (length + pad) // k, k * width)
    return stacked, F.pad(valid, (0, pad)).reshape(n, -1, k).any(dim=-1)


def rope_tables(
    length: int, head_dim: int, theta: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape (length, head_dim // 2) for rotary position embeddings."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, D) by position; the two halves of D form the complex pairs."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


@dataclass
class CrossCache:
    """Per-layer cross-attention keys/values of N utterances.

    keys, values: one (N, H, S, Dh) tensor per layer.
    S counts the frames the decoder reads (`DiffusionDecoder.frames`: encoder frames, stacked by
    `frame_stack`).
    key_valid: (N, S) bool, True on frames that cover real audio.
    key_pos: (N, S) expected canvas position of each frame (alignment prior), or None.
    ctc_log_probs: (N, S, V + 1) the alignment head's output (for its loss and the logit
        fusion), or None.
    token_memory: (N, S, D) each frame's expected token embedding under the head's posteriors
        (`align_token_memory` / `align_token_input`), or None.
    token_start: (N, S) probability that each frame starts a token (1.0 or 0.0 with
        `align_best_path`), or None without the alignment head.
    logit_bias: (N, 1, V) added to every position's logits (0, or BLOCKED on tokens outside
        the utterance's language vocabulary), or None.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_valid: torch.Tensor
    key_pos: torch.Tensor | None = None
    ctc_log_probs: torch.Tensor | None = None
    token_memory: torch.Tensor | None = None
    token_start: torch.Tensor | None = None
    logit_bias: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.key_valid.shape[0]


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x, cos, sin, attn_mask):
        """x: (B, L, D); attn_mask: (B, 1, 1, L) bool (True = attend) -> (B, L, D)."""
        b, length, width = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(b, length, width))


class CrossAttention(nn.Module):
    def __init__(
        self,
        width: int,
        enc_width: int,
        heads: int,
        dropout: float,
        prior: bool,
        token_memory: bool = False,
    ):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(width, width, bias=False)
        # keys/values projected from the encoder width (1280 for large-v3) to the decoder width
        self.kv = nn.Linear(enc_width, 2 * width, bias=False)
        self.kv_token = nn.Linear(width, 2 * width, bias=False) if token_memory else None
        self.out = nn.Linear(width, width, bias=False)
        # Per-head sharpness of the alignment prior, through softplus so it stays >= 0. Heads
        # start from widths of about 1 to 10 canvas positions, so some look closely and some
        # around; training sets them.
        self.prior_sharpness = (
            nn.Parameter(torch.linspace(0.0, -4.5, heads).exp().expm1().log()) if prior else None
        )

    def project(
        self, features: torch.Tensor, token_memory: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (N, S, E), token_memory (N, S, D) or None -> keys, values (N, H, S, Dh)."""
        n, s, _ = features.shape
        kv = self.kv(features)
        if self.kv_token is not None and token_memory is not None:
            kv = kv + self.kv_token(token_memory)
        k, v = kv.view(n, s, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x, k, v, key_mask, sq_distance=None):
        """x: (N*K, L, D) with K rows per utterance; k, v: (N, H, S, Dh); key_mask: (N, 1, 1, S);
        sq_distance: (N, K*L, S) squared distance of each query row's canvas position to each
        frame's expected position (`squared_distance`), or None (no prior)."""
        rows, length, width = x.shape
        n = k.shape[0]
        group = rows // n
        q = self.q(x).view(n, group * length, self.heads, -1).transpose(1, 2)  # (N, H, K*L, Dh)
        drop = self.dropout if self.training else 0.0
        mask = key_mask
        if self.prior_sharpness is not None and sq_distance is not None:
            bias = alignment_bias(sq_distance, F.softplus(self.prior_sharpness))
            mask = bias.masked_fill(~key_mask, float("-inf")).to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(rows, length, width))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(width, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class DecoderBlock(nn.Module):
    def __init__(self, cfg: DecoderConfig, enc_width: int):
        super().__init__()
        hidden = 64 * round(cfg.width * cfg.mlp_ratio / 64)
        self.norm_self = nn.RMSNorm(cfg.width, eps=1e-6)
        self.self_attn = SelfAttention(cfg.width, cfg.heads, cfg.dropout)
        self.norm_cross = nn.RMSNorm(cfg.width, eps=1e-6)
        self.cross_attn = CrossAttention(
            cfg.width,
            enc_width,
            cfg.heads,
            cfg.dropout,
            prior=cfg.align_hidden > 0,
            token_memory=cfg.align_token_memory,
        )
        self.norm_mlp = nn.RMSNorm(cfg.width, eps=1e-6)
        self.mlp = SwiGLU(cfg.width, hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, self_mask, k, v, key_mask, sq_distance=None):
        x = x + self.drop(self.self_attn(self.norm_self(x), cos, sin, self_mask))
        x = x + self.drop(self.cross_attn(self.norm_cross(x), k, v, key_mask, sq_distance))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class DiffusionDecoder(nn.Module):
    """Masked-diffusion denoiser p(x_0 | x_t, audio)."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, enc_width: int, max_len: int = 448):
        super().__init__()
        needs_head = ("align_context", "align_token_memory", "align_token_input", "align_best_path")
        for flag in needs_head:
            if getattr(cfg, flag) and not cfg.align_hidden:
                raise ValueError(
                    f"model.decoder.{flag} needs the alignment head: set align_hidden > 0"
                )
        if cfg.align_logit_weight and not cfg.align_best_path:
            raise ValueError(
                "model.decoder.align_logit_weight reads the head's tokens at whole canvas "
                "positions: set align_best_path"
            )
        if cfg.frame_stack < 1:
            raise ValueError(f"model.decoder.frame_stack must be >= 1, got {cfg.frame_stack}")
        if cfg.align_context < 0 or (cfg.align_context and cfg.align_context % 2 == 0):
            raise ValueError(
                "model.decoder.align_context must be 0 or an odd number of frames, "
                f"got {cfg.align_context}"
            )
        if cfg.width % cfg.heads or (cfg.width // cfg.heads) % 2:
            raise ValueError(
                f"decoder width {cfg.width} must split into {cfg.heads} heads of even size"
            )
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size + 1, cfg.width)  # last row: [MASK]
        self.pos_embed = nn.Embedding(max_len, cfg.width)
        enc_width *= cfg.frame_stack  # the width of the frames it reads (`frames`)
        self.blocks = nn.ModuleList(DecoderBlock(cfg, enc_width) for _ in range(cfg.layers))
        self.norm_out = nn.RMSNorm(cfg.width, eps=1e-6)
        self.head = nn.Linear(cfg.width, vocab_size, bias=False)
        self.apply(self._init)
        # built after the init above: it keeps PyTorch's default init
        self.align = (
            AlignmentHead(enc_width, cfg.align_hidden, vocab_size, cfg.align_context)
            if cfg.align_hidden
            else None
        )

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def frames(
        self, features: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The frames the decoder reads: (N, S, E), (N, S) -> (N, S', k E), (N, S') with
        k = `frame_stack` and S' = ceil(S / k) (`stack_frames`)."""
        return stack_frames(features, valid, self.cfg.frame_stack)

    def cross_cache(
        self, features: torch.Tensor, valid: torch.Tensor, reading: HeadReading = AS_TRAINED
    ) -> CrossCache:
        """Project encoder output once per utterance.

        Args:
            features: (N, S, E) encoder output; valid: (N, S) bool. The cache holds the
                decoder's S' = ceil(S / frame_stack) frames (`frames`).
            reading: how decoding reads the alignment head, and the tokens each utterance may
                contain (`alignment.HeadReading`); the default is training's.
        """
        features, valid = self.frames(features, valid)
        log_probs = key_pos = memory = start = bias = None
        if reading.allowed is not None:
            bias = blocked_bias(reading.allowed)
        if self.align is not None:
            log_probs = self.align.read(features, valid, reading)
            # detached: only the CTC loss trains the head (see whisfusion.alignment)
            heard = log_probs.detach()
            starts = best_path_token_start if self.cfg.align_best_path else new_token_probability
            start = starts(heard, valid, self.align.blank)
            key_pos = expected_positions(start)
            if self.cfg.align_token_memory or self.cfg.align_token_input:
                memory = expected_embedding(heard, self.embed.weight[: self.vocab_size])
        pairs = [blk.cross_attn.project(features, memory) for blk in self.blocks]
        keys, values = [k for k, _ in pairs], [v for _, v in pairs]
        return CrossCache(keys, values, valid, key_pos, log_probs, memory, start, bias)

    def forward(
        self,
        tokens: torch.Tensor,
        cache: CrossCache,
        canvas_valid: torch.Tensor | None = None,
        align_weight: float | None = None,
    ) -> torch.Tensor:
        """Logits for every canvas position.

        Args:
            tokens: (N*K, L) canvas ids, [MASK] = vocab_size; K rows per cached utterance,
                utterance-major (row n*K + k belongs to utterance n).
            cache: cross-attention keys/values of N utterances (`cross_cache`).
            canvas_valid: (N*K, L) bool, False beyond each row's own canvas (padded batches).
            align_weight: weight of the head's log-probabilities in the logits, None = the
                trained `align_logit_weight` (decoding may lean on the head more than training).
        Returns:
            (N*K, L, vocab_size) float logits.
        """
        rows, length = tokens.shape
        if rows % cache.batch:
            raise ValueError(f"{rows} canvas rows do not group onto {cache.batch} utterances")
        if length > self.pos_embed.num_embeddings:
            raise ValueError(
                f"canvas of {length} positions is longer than the decoder's maximum "
                f"{self.pos_embed.num_embeddings} (model.canvas.max_len)"
            )
        cos, sin = rope_tables(
            length, self.cfg.width // self.cfg.heads, self.cfg.rope_theta, tokens.device
        )
        self_mask = None if canvas_valid is None else canvas_valid[:, None, None, :]
        key_mask = cache.key_valid[:, None, None, :]
        sq_distance = None
        if self.align is not None and cache.key_pos is not None:
            # once per forward, shared by every layer: query row k*L + i sits at position i
            query_pos = torch.arange(length, device=tokens.device).repeat(rows // cache.batch)
            sq_distance = squared_distance(query_pos, cache.key_pos)
        x = self.embed(tokens) + self.pos_embed.weight[:length]
        if self.cfg.align_token_input and cache.token_memory is not None:
            heard = aligned_token_embedding(
                cache.token_start, cache.key_pos, cache.token_memory, length
            )
            x = _add_per_utterance(x, heard)
        for blk, k, v in zip(self.blocks, cache.keys, cache.values, strict=False):
            if self.cfg.activation_checkpointing and self.training:
                x = checkpoint(
                    blk, x, cos, sin, self_mask, k, v, key_mask, sq_distance, use_reentrant=False
                )
            else:
                x = blk(x, cos, sin, self_mask, k, v, key_mask, sq_distance)
        logits = self.head(self.norm_out(x)).float()
        weight = self.cfg.align_logit_weight if align_weight is None else align_weight
        if weight and cache.ctc_log_probs is not None:
            # detached: the decoder learns a correction to the head's reading, the head still
            # learns from its CTC loss alone
            heard = aligned_token_embedding(
                cache.token_start,
                cache.key_pos,
                cache.ctc_log_probs.detach()[..., : self.vocab_size],
                length,
                FUSION_WIDTH,
            )
            logits = _add_per_utterance(logits, weight * heard)
        if cache.logit_bias is not None:
            logits = _add_per_utterance(logits, cache.logit_bias)
        return logits


def _add_per_utterance(rows: torch.Tensor, per_utterance: torch.Tensor) -> torch.Tensor:
    """rows (N*K, L, D), utterance-major, plus per_utterance (N, L, D) or (N, 1, D) on each of
    its K rows, broadcast rather than copied K times."""
    n = per_utterance.shape[0]
    return (rows.view(n, -1, *rows.shape[1:]) + per_utterance[:, None]).view(rows.shape)
