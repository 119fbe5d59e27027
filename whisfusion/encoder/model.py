"""The Whisper audio encoder: two convolutions, sinusoidal positions, pre-LN blocks, a final LN.

Parameter names follow openai-whisper's `AudioEncoder` (`conv1`, `blocks.0.attn.query`, ...,
`ln_post`), so an openai-whisper checkpoint loads as is and the other formats map onto it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderDims:
    # Mel bins of the input (80, or 128 for large-v3).
    n_mels: int
    # Output frames of a 30 s window (1500): rows of the positional table.
    n_ctx: int
    # Residual stream width.
    width: int
    # Attention heads; width must be divisible by heads.
    heads: int
    # Transformer blocks.
    layers: int
    # Hidden size of each block's MLP (4 x width in every published Whisper).
    mlp_width: int

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"encoder width {self.width} is not divisible by heads {self.heads}")


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's positional table: sines in the first half of the channels, cosines in the second.

    Returns:
        table: shape (length, channels), float32.
    """
    if channels % 2:
        raise ValueError(f"sinusoidal positions need an even number of channels, got {channels}")
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        # No key bias: it adds the same q.b term to every score of a query, which softmax ignores.
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, width) -> (B, T, width)."""
        batch, frames, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, frames, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attended = F.scaled_dot_product_attention(q, k, v)
        return self.out(attended.transpose(1, 2).reshape(batch, frames, width))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int):
        super().__init__()
        self.attn = MultiHeadSelfAttention(width, heads)
        self.attn_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_width), nn.GELU(), nn.Linear(mlp_width, width)
        )
        self.mlp_ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, width) -> (B, T, width)."""
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, dims: EncoderDims):
        super().__init__()
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, dims.width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims.width, dims.width, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_ctx, dims.width))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(dims.width, dims.heads, dims.mlp_width)
            for _ in range(dims.layers)
        )
        self.ln_post = nn.LayerNorm(dims.width)

    def forward(self, mel: torch.Tensor, output_layer: int = 0) -> torch.Tensor:
        """mel: (B, n_mels, frames), frames even and at most 2 * n_ctx -> (B, frames // 2, width).

        A window shorter than 30 s takes the first frames // 2 rows of the positional table.
        output_layer: 0 = the last block through `ln_post`, as Whisper's decoder reads it;
        k >= 1 = the output of block k (the later blocks are not run), layer-normalised without
        gain or bias, because `ln_post`'s are fitted to the last block's statistics.
        """
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        for block in self.blocks[: output_layer or len(self.blocks)]:
            x = block(x)
        if output_layer:
            return F.layer_norm(x, x.shape[-1:])
        return self.ln_post(x)
