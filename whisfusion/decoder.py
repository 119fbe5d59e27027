"""The paper's diffusion decoder: a bidirectional Transformer over the text canvas, conditioned
on audio.

Each block: pre-RMSNorm self-attention with RoPE (bidirectional: every canvas position sees every
other), pre-RMSNorm cross-attention to the frozen encoder output, pre-RMSNorm SwiGLU MLP. No
biases, no timestep input (time-agnostic, as in LLaDA / SMDM). The embedding table has one extra
row for [MASK] (id = vocab_size); the output head has vocab_size classes, so [MASK] can never be
predicted.

Positions: RoPE in self-attention, plus a learned absolute position embedding added to the input.
RoPE alone cannot tell positions apart on an all-[MASK] canvas (every value vector is the same,
so every weighted sum is too), and decoding starts from exactly that canvas; the absolute
embedding breaks the symmetry from the first step.

Cross-attention keys/values depend on the audio only: `cross_cache` computes them once per
utterance, and `forward` reuses them for any number of candidate rows. K candidate rows of one
utterance are folded into the query length of a single attention call (queries never interact in
cross-attention, so this is exact), which shares the cached keys without copying them. Frames
after the audio's end are masked out of cross-attention. With `frame_stack` k > 1 the decoder
reads each k adjacent encoder frames as one (`stack_frames`). Asked for some positions' logits,
the last block runs at those alone; with `CrossCache.reuse` (`decode.kv_refresh`) a denoising
step runs only the positions it reads and those just committed (`whisfusion.kv_reuse`).

An optional `DecoderPrior` (the CTC alignment prior, `whisfusion.prior.AlignmentPrior`) may
read the frames once per utterance and then add to the keys/values, the input, the
cross-attention masks and the logits; without one, none of that code runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from whisfusion.config import DecoderConfig
from whisfusion.denoiser import check_canvas
from whisfusion.kv_reuse import ReusedKeys, at_rows, cross_mask_rows, step_rows, written_into


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
    """Cross-attention keys/values of N utterances, for `DiffusionDecoder.forward`.

    keys, values: one (N, H, S, Dh) tensor per layer; S counts the frames the decoder reads
        (encoder frames, stacked by `frame_stack`).
    key_valid: (N, S) bool, True on frames that cover real audio.
    prior: what the decoder's `DecoderPrior` read from these frames, or None without one.
    reuse: self-attention keys/values kept between denoising steps, or None: none kept.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_valid: torch.Tensor
    prior: Any = None
    reuse: ReusedKeys | None = None

    @property
    def batch(self) -> int:
        return self.key_valid.shape[0]


class DecoderPrior(Protocol):
    """The hooks through which an optional extension (an `nn.Module`) conditions the decoder.

    `read` runs once per utterance when the cache is built; the others at every forward, with
    its result. Rows are utterance-major: K = rows // N rows per utterance.
    """

    def read(
        self, frames: torch.Tensor, valid: torch.Tensor, embed: torch.Tensor, reading: Any = None
    ) -> Any:
        """frames (N, S, E') the decoder's frames, valid (N, S), embed (V, D) the token
        embeddings, reading: decode-time settings (None = as trained) -> the extension's
        per-utterance state."""

    def key_values(self, kv: list[torch.Tensor], state: Any) -> list[torch.Tensor]:
        """Per layer the (N, S, 2D) key/value projection of the frames -> the same, adjusted."""

    def embed_input(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        """(N*K, L, D) canvas input embeddings -> the same, adjusted."""

    def cross_masks(
        self, key_mask: torch.Tensor, length: int, rows: int, state: Any
    ) -> list[torch.Tensor]:
        """key_mask (N, 1, 1, S) bool -> per layer a cross-attention mask (N, 1 or H, K*L, S):
        bool (True = attend) or an additive float bias."""

    def fuse_logits(self, logits: torch.Tensor, state: Any) -> torch.Tensor:
        """(N*K, L, V) float logits -> the same, adjusted."""


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x, cos, sin, attn_mask, query=None, past=None):
        """x: (B, L, D); cos, sin: RoPE tables at x's positions, (L, Dh/2) or (B, 1, L, Dh/2);
        attn_mask: (B, 1, 1, L') bool (True = attend) -> (out, k, v): out (B, L, D), or with
        `query` ((B, Q) long rows of x) (B, Q, D); k, v (B, H, L', Dh) the keys and values
        attended over. With `past` (`StepRows.past_of`) x holds the rows at some positions of
        a longer sequence, L' long, whose keys and values an earlier call left: x's are
        written into them."""
        b, length, width = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = written_into(past, k, v)
        if query is not None:
            q = q.gather(2, query[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3]))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(b, -1, width)), k, v


class CrossAttention(nn.Module):
    def __init__(self, width: int, enc_width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(width, width, bias=False)
        # keys/values projected from the encoder width (1280 for large-v3) to the decoder width
        self.kv = nn.Linear(enc_width, 2 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def split(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, S, 2D) projection `kv(frames)` -> keys, values (N, H, S, Dh)."""
        n, s, _ = kv.shape
        k, v = kv.view(n, s, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x, k, v, mask):
        """x: (N*K, L, D) with K rows per utterance; k, v: (N, H, S, Dh); mask: (N, 1, 1, S)
        bool (True = attend), or an additive (N, H, K*L, S) float bias -> (N*K, L, D)."""
        rows, length, width = x.shape
        n = k.shape[0]
        group = rows // n
        q = self.q(x).view(n, group * length, self.heads, -1).transpose(1, 2)  # (N, H, K*L, Dh)
        if mask.dtype != torch.bool:
            mask = mask.to(q.dtype)  # a bias follows the queries (bf16 under autocast)
        drop = self.dropout if self.training else 0.0
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
        self.cross_attn = CrossAttention(cfg.width, enc_width, cfg.heads, cfg.dropout)
        self.norm_mlp = nn.RMSNorm(cfg.width, eps=1e-6)
        self.mlp = SwiGLU(cfg.width, hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, self_mask, k, v, cross_mask, query=None, past=None):
        """x (N*K, L, D) -> (out, k_self, v_self): out (N*K, L, D), or with `query` ((N*K, Q)
        long rows of x) the outputs at those rows alone (N*K, Q, D): self-attention reads
        every position, the rest of the block runs on Q rows. k_self, v_self: the
        self-attention keys and values read (`SelfAttention`, with `past`)."""
        y, k_self, v_self = self.self_attn(self.norm_self(x), cos, sin, self_mask, query, past)
        if query is not None:
            x, cross_mask = at_rows(x, query), cross_mask_rows(cross_mask, query)
        x = x + self.drop(y)
        x = x + self.drop(self.cross_attn(self.norm_cross(x), k, v, cross_mask))
        return x + self.drop(self.mlp(self.norm_mlp(x))), k_self, v_self


class DiffusionDecoder(nn.Module):
    """Masked-diffusion denoiser p(x_0 | x_t, audio); a `whisfusion.denoiser.Denoiser`.

    Args:
        cfg: layers, width, heads, MLP ratio, dropout, RoPE base, frame stacking.
        vocab_size: V, the output classes; the embedding table has V + 1 rows ([MASK] last).
        enc_width: E, the encoder's output width.
        max_len: the longest canvas (rows of the absolute position embedding).
        prior: an optional `DecoderPrior`, kept as the submodule `prior`.
    """

    def __init__(
        self,
        cfg: DecoderConfig,
        vocab_size: int,
        enc_width: int,
        max_len: int = 448,
        prior: nn.Module | None = None,
    ):
        super().__init__()
        if cfg.frame_stack < 1:
            raise ValueError(f"model.decoder.frame_stack must be >= 1, got {cfg.frame_stack}")
        if cfg.width % cfg.heads or (cfg.width // cfg.heads) % 2:
            raise ValueError(
                f"decoder width {cfg.width} must split into {cfg.heads} heads of even size"
            )
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size + 1, cfg.width)  # last row: [MASK]
        self.pos_embed = nn.Embedding(max_len, cfg.width)
        frame_width = enc_width * cfg.frame_stack  # the width of the frames it reads (`frames`)
        self.blocks = nn.ModuleList(DecoderBlock(cfg, frame_width) for _ in range(cfg.layers))
        self.norm_out = nn.RMSNorm(cfg.width, eps=1e-6)
        self.head = nn.Linear(cfg.width, vocab_size, bias=False)
        self.apply(self._init)
        # assigned after the init above: the prior initialises its own parameters
        self.prior = prior

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
        self, features: torch.Tensor, valid: torch.Tensor, reading: Any = None
    ) -> CrossCache:
        """Project encoder output once per utterance.

        Args:
            features: (N, S, E) encoder output; valid: (N, S) bool. The cache holds the
                decoder's S' = ceil(S / frame_stack) frames (`frames`).
            reading: how decoding reads the prior (its `read`); None reads it as training does.
        """
        features, valid = self.frames(features, valid)
        kv = [blk.cross_attn.kv(features) for blk in self.blocks]
        state = None
        if self.prior is not None:
            state = self.prior.read(features, valid, self.embed.weight[: self.vocab_size], reading)
            kv = self.prior.key_values(kv, state)
        pairs = [blk.cross_attn.split(x) for blk, x in zip(self.blocks, kv, strict=True)]
        return CrossCache([k for k, _ in pairs], [v for _, v in pairs], valid, state)

    def forward(
        self,
        tokens: torch.Tensor,
        cache: CrossCache,
        canvas_valid: torch.Tensor | None = None,
        where: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for every canvas position.

        Args:
            tokens: (N*K, L) canvas ids, [MASK] = vocab_size; K rows per cached utterance,
                utterance-major (row n*K + k belongs to utterance n).
            cache: cross-attention keys/values of N utterances (`cross_cache`).
            canvas_valid: (N*K, L) bool, False beyond each row's own canvas (padded batches).
            where: (N*K, L) bool, the positions whose logits are needed, or None for all; with
                `cache.reuse` the keys of the other positions may be the last call's.
        Returns:
            float logits: (P, vocab_size) at the P positions of `where` (its row-major order),
            or (N*K, L, vocab_size) at every position when `where` is None.
        """
        rows, length = tokens.shape
        check_canvas(rows, length, cache.batch, self.pos_embed.num_embeddings)
        cos, sin = rope_tables(
            length, self.cfg.width // self.cfg.heads, self.cfg.rope_theta, tokens.device
        )
        self_mask = None if canvas_valid is None else canvas_valid[:, None, None, :]
        key_mask = cache.key_valid[:, None, None, :]
        cross_masks = [key_mask] * len(self.blocks)
        x = self.embed(tokens) + self.pos_embed.weight[:length]
        if self.prior is not None:
            cross_masks = self.prior.cross_masks(key_mask, length, rows, cache.prior)
            x = self.prior.embed_input(x, cache.prior)
        reuse = None if where is None else cache.reuse
        run = step_rows(tokens, where, reuse)
        if run.index is not None:  # the rows at some positions, attending over all
            x = at_rows(x, run.index)
            cos, sin = cos[run.index][:, None], sin[run.index][:, None]
            cross_masks = [cross_mask_rows(m, run.index) for m in cross_masks]
        keys, values = [], []
        last = len(self.blocks) - 1
        layers = zip(self.blocks, cache.keys, cache.values, cross_masks, strict=True)
        for i, (blk, k, v, cross_mask) in enumerate(layers):
            inputs = (x, cos, sin, self_mask, k, v, cross_mask, run.query if i == last else None)
            if self.cfg.activation_checkpointing and self.training:
                x, k_self, v_self = checkpoint(blk, *inputs, use_reentrant=False)
            else:
                x, k_self, v_self = blk(*inputs, run.past_of(i))
            if reuse is not None:
                keys.append(k_self)
                values.append(v_self)
        if reuse is not None:
            reuse.step(tokens, keys, values)
        logits = self.head(self.norm_out(x if run.out is None else x[run.out])).float()
        if self.prior is not None:
            logits = self.prior.fuse_logits(logits, cache.prior, where)
        return logits
