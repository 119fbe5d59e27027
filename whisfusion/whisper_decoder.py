"""The diffusion decoder started from Whisper's own pretrained decoder (`model.decoder.kind:
whisper`).

Whisper's decoder (token and learned position embeddings, pre-LayerNorm blocks of self-attention,
cross-attention and a GELU MLP, a final LayerNorm, an output layer tied to the token embedding) is
kept as it is, with three changes that turn an autoregressive model into a masked denoiser, as
DiffuLLaMA and Dream adapt autoregressive language models:

- self-attention is bidirectional (a causal mask remains available, `causal=True`, to check the
  loaded weights against Whisper's own decoding);
- one extra input embedding for [MASK] (id = vocab_size), initialised to the mean of the text
  token embeddings: the input that says "some token" without favouring one, at the scale of the
  rows the blocks were trained on; the output layer has only the vocab_size classes of Whisper's
  embedding, so [MASK] can never be predicted;
- Dream's shift: the output at position i predicts the token at i + 1, as Whisper was trained.
  The decoder feeds Whisper's own prompt inside: `<|startoftranscript|> <|xx|> <|transcribe|>
  <|notimestamps|> t1 .. tn <|endoftext|> ...`, so the canvas's language token (position 0) is
  predicted from <|startoftranscript|>, text token j from the position before it, as in
  Whisper's decoding. Outside this module the canvas format is the common one
  (`whisfusion.canvas`).

Cross-attention keys/values depend on the audio only: `cross_cache` computes them once per
utterance and `forward` reuses them for K candidate rows by folding the rows into the query
length of one attention call (queries never interact in cross-attention, so this is exact).
Frames after each clip's end are masked out of cross-attention. Between the denoising steps of
one decoding, `ReusedKeys` (`decode.kv_refresh`) keeps each block's self-attention keys/values,
so that a step runs only the positions it reads and those just committed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from whisfusion.denoiser import check_canvas
from whisfusion.encoder.model import MultiHeadSelfAttention
from whisfusion.kv_reuse import ReusedKeys, at_rows, step_rows, written_into
from whisfusion.quantize import Int8Linear

# Whisper's own LayerNorm epsilon (openai-whisper and transformers).
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class WhisperDecoderDims:
    vocab_size: int  # rows of Whisper's token embedding (= output classes)
    n_ctx: int  # learned positions (448 for every released Whisper)
    width: int
    heads: int
    layers: int
    mlp_width: int


@dataclass(frozen=True)
class WhisperPrompt:
    """Whisper's special ids around the canvas: `sot lang task notimestamps text...`."""

    sot: int
    task: int  # <|transcribe|>
    no_timestamps: int


@dataclass
class WhisperCrossCache:
    """keys, values: one (N, H, S, Dh) tensor per block; key_valid: (N, S) bool, True on frames
    that cover real audio."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_valid: torch.Tensor
    # self-attention keys/values kept between denoising steps (`ReusedKeys`); None: none kept
    reuse: ReusedKeys | None = None

    @property
    def batch(self) -> int:
        return self.key_valid.shape[0]


class Attention(MultiHeadSelfAttention):
    """Whisper's attention (q and v with bias, k without, as in its encoder), used here with a
    padding mask for self-attention and with cached keys/values for cross-attention."""

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, H, L, Dh)."""
        b, length, _ = x.shape
        return x.view(b, length, self.heads, -1).transpose(1, 2)

    def attend(self, q: torch.Tensor, k, v, mask, causal: bool = False) -> torch.Tensor:
        """q (B, H, Lq, Dh), k/v (B, H, S, Dh), mask broadcastable to (B, H, Lq, S) bool
        (True = attend) or None -> (B, Lq, D) after the output projection."""
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        b, _, length, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, length, -1))


class Block(nn.Module):
    def __init__(self, dims: WhisperDecoderDims):
        super().__init__()
        self.attn_ln = nn.LayerNorm(dims.width, eps=LAYER_NORM_EPS)
        self.attn = Attention(dims.width, dims.heads)
        self.cross_attn_ln = nn.LayerNorm(dims.width, eps=LAYER_NORM_EPS)
        self.cross_attn = Attention(dims.width, dims.heads)
        self.mlp_ln = nn.LayerNorm(dims.width, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(dims.width, dims.mlp_width), nn.GELU(), nn.Linear(dims.mlp_width, dims.width)
        )

    def forward(self, x, self_mask, k, v, key_mask, causal: bool, query=None, past=None):
        """x (N*K, L, D); k, v (N, H, S, Dh); key_mask (N, 1, 1, S) -> (out, k_self, v_self):
        out (N*K, L, D), or with `query` ((N*K, Q) long positions, `query_positions`) the
        outputs at those positions alone, (N*K, Q, D): self-attention still reads every
        position, the rest of the block runs on Q rows. k_self, v_self (N*K, H, L, Dh) are the
        self-attention keys and values it read.

        With `past` = (index, keys, values) x holds only the rows at the positions `index`
        ((N*K, Q) long) of a longer sequence whose self-attention keys and values (N*K, H, L',
        Dh) an earlier call left: this call's rows are written into them and every row attends
        over all L' positions."""
        h = self.attn_ln(x)
        a = self.attn
        k_self, v_self = a.split(a.key(h)), a.split(a.value(h))
        if past is not None:
            k_self, v_self = written_into(past, k_self, v_self)
        if query is not None:
            x, h, self_mask = (at_rows(t, query) for t in (x, h, self_mask))
        x = x + a.attend(a.split(a.query(h)), k_self, v_self, self_mask, causal)
        rows, length, width = x.shape
        n = k.shape[0]
        c = self.cross_attn
        # K rows of an utterance become one query sequence of K*L against its cached keys
        q = c.split(c.query(self.cross_attn_ln(x)).view(n, -1, width))
        x = x + c.attend(q, k, v, key_mask).view(rows, length, width)
        return x + self.mlp(self.mlp_ln(x)), k_self, v_self


def annealed_causal_mask(length: int, share: float, device=None) -> torch.Tensor:
    """(L, L) bool self-attention mask, True = attend: each position sees itself and every
    earlier one, and each later one with probability `share` (0: Whisper's causal mask, 1:
    bidirectional). Drawn from torch's global generator, which training seeds per step."""
    if share >= 1:
        return torch.ones(length, length, dtype=torch.bool, device=device)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return causal | (torch.rand(length, length, device=device) < share)


class WhisperDenoiser(nn.Module):
    """Masked-diffusion denoiser p(x_0 | x_t, audio) with Whisper's decoder inside.

    Build with `whisfusion.whisper_weights.load_whisper_decoder` to start from pretrained weights.
    """

    # no CTC alignment head: that prior extends the paper's decoder only
    align = None

    def __init__(self, dims: WhisperDecoderDims, prompt: WhisperPrompt):
        super().__init__()
        self.dims, self.prompt = dims, prompt
        self.vocab_size = dims.vocab_size
        self.token_embedding = nn.Embedding(dims.vocab_size, dims.width)
        self.mask_embed = nn.Parameter(torch.zeros(dims.width))
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_ctx, dims.width))
        self.blocks = nn.ModuleList(Block(dims) for _ in range(dims.layers))
        self.ln = nn.LayerNorm(dims.width, eps=LAYER_NORM_EPS)
        # share of later positions self-attention sees in training (`annealed_causal_mask`;
        # whisfusion.callbacks.attention_anneal raises it to 1); eval is always bidirectional
        self.future_share = 1.0
        # the output layer of an int8 copy (`int8_output`); None: the tied float embedding
        self.int8_head = None

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def head(self) -> nn.Embedding:
        """The output layer: Whisper's token embedding, tied (its `.weight` is (V, D))."""
        return self.token_embedding

    @property
    def max_canvas(self) -> int:
        """Longest canvas: Whisper's positions less the three prompt tokens around it."""
        return self.dims.n_ctx - 3

    def init_mask_embedding(self) -> None:
        """[MASK] = mean embedding of the ordinary text tokens (ids below the first special,
        <|endoftext|> = sot - 1): no token favoured, the scale of a real input row."""
        with torch.no_grad():
            self.mask_embed.copy_(
                self.token_embedding.weight[: self.prompt.sot - 1].float().mean(0)
            )

    def cross_cache(self, features: torch.Tensor, valid: torch.Tensor) -> WhisperCrossCache:
        """features (N, S, E) encoder output (its last block, through the final LayerNorm),
        valid (N, S) bool -> per-block keys/values (N, H, S, Dh)."""
        keys, values = [], []
        for blk in self.blocks:
            c = blk.cross_attn
            keys.append(c.split(c.key(features)))
            values.append(c.split(c.value(features)))
        return WhisperCrossCache(keys, values, valid)

    @staticmethod
    def around_prompt(canvas: torch.Tensor, sot, task, no_timestamps) -> torch.Tensor:
        """Canvas rows (B, L) -> Whisper's sequence (B, L + 3): `sot canvas[0] task
        no_timestamps canvas[1:]` (ids, or the validity of each position)."""
        b = canvas.shape[0]
        first = canvas.new_full((b, 1), sot)
        mid = canvas.new_tensor([task, no_timestamps]).expand(b, 2)
        return torch.cat([first, canvas[:, :1], mid, canvas[:, 1:]], dim=1)

    def embed(self, ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """ids (R, Q) with [MASK] = vocab_size -> input rows (R, Q, D); `positions` (R, Q) long
        the place of each id in Whisper's sequence (None: 0 .. Q-1)."""
        is_mask = ids == self.mask_id
        x = self.token_embedding(ids.masked_fill(is_mask, 0))
        x = torch.where(is_mask[..., None], self.mask_embed.to(x.dtype), x)
        at = self.positional_embedding
        return x + (at[: ids.shape[1]] if positions is None else at[positions]).to(x.dtype)

    def hidden(
        self,
        ids: torch.Tensor,
        cache: WhisperCrossCache,
        valid: torch.Tensor | None = None,
        causal: bool = False,
        read: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Whisper's decoder on its own sequence: ids (N*K, L') with [MASK] = vocab_size, valid
        (N*K, L') bool or None -> final hidden states (N*K, L', D), or (P, D) at the P
        positions of `read` ((N*K, L') bool, row-major; not with `causal`): the last block
        runs there alone, as nothing reads its other outputs. With `cache.reuse` between its
        full passes, only the read positions and those whose id changed since the last call
        run; the others' self-attention keys and values are the last call's."""
        rows, length = ids.shape
        check_canvas(rows, length - 3, cache.batch, self.max_canvas)  # 3: the prompt's tokens
        self_mask = None if valid is None or causal else valid[:, None, None, :]
        if self.training and self.future_share < 1 and not causal:
            opened = annealed_causal_mask(length, self.future_share, ids.device)
            self_mask = opened if self_mask is None else self_mask & opened
        key_mask = cache.key_valid[:, None, None, :]
        reuse = None if causal or read is None else cache.reuse
        run = step_rows(ids, read, reuse)
        if run.index is None:
            x = self.embed(ids)
        else:
            x = self.embed(ids.gather(1, run.index), run.index)
        keys, values = [], []
        last = len(self.blocks) - 1
        layers = zip(self.blocks, cache.keys, cache.values, strict=True)
        for i, (blk, k, v) in enumerate(layers):
            at = run.query if i == last else None
            x, k_self, v_self = blk(x, self_mask, k, v, key_mask, causal, at, run.past_of(i))
            if reuse is not None:
                keys.append(k_self)
                values.append(v_self)
        if reuse is not None:
            reuse.step(ids, keys, values)
        x = self.ln(x)
        return x if run.out is None else x[run.out]

    def canvas_hidden(
        self,
        tokens: torch.Tensor,
        cache: WhisperCrossCache,
        canvas_valid: torch.Tensor | None,
        causal: bool = False,
        where: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states that predict each canvas position: tokens (N*K, L) -> (N*K, L, D), or
        (P, D) at the P positions of `where` ((N*K, L) bool), in its row-major order.

        Canvas position 0 (language) is read at <|startoftranscript|>, position j >= 1 at the
        Whisper position before text token j (Dream's shift).
        """
        valid = None
        if canvas_valid is not None:
            valid = self.around_prompt(canvas_valid, True, True, True)
        p = self.prompt
        ids = self.around_prompt(tokens, p.sot, p.task, p.no_timestamps)
        length = tokens.shape[1]
        if where is None or causal:
            h = self.hidden(ids, cache, valid, causal)
            h = torch.cat([h[:, :1], h[:, 3 : length + 2]], dim=1)
            return h if where is None else h[where]
        read = torch.zeros_like(ids, dtype=torch.bool)
        read[:, 0], read[:, 3 : length + 2] = where[:, 0], where[:, 1:]
        return self.hidden(ids, cache, valid, read=read)

    def logits_at(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., vocab_size) float logits through the tied output layer."""
        if self.int8_head is not None:
            return self.int8_head(hidden)
        # the weight itself, not a transposed view: autocast then casts the 51,865 x D
        # embedding once per autocast region (it caches casts of leaf tensors), not per step
        return F.linear(hidden, self.token_embedding.weight).float()

    def int8_output(self) -> None:
        """Give this (inference) copy an int8 output layer (`whisfusion.quantize`): the tied
        embedding is not an `nn.Linear`, so `quantize_linears` does not reach it."""
        self.int8_head = Int8Linear(self.token_embedding.weight)

    def forward(
        self,
        tokens: torch.Tensor,
        cache: WhisperCrossCache,
        canvas_valid: torch.Tensor | None = None,
        where: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for every canvas position.

        Args:
            tokens: (N*K, L) canvas ids, [MASK] = vocab_size; K rows per cached utterance,
                utterance-major (row n*K + k belongs to utterance n).
            cache: cross-attention keys/values of N utterances (`cross_cache`).
            canvas_valid: (N*K, L) bool, False beyond each row's own canvas.
            where: (N*K, L) bool, the positions whose logits are needed, or None for all: the
                51,865-way output layer is most of this decoder's work.
        Returns:
            float logits: (P, vocab_size) at the P positions of `where` (its row-major order),
            or (N*K, L, vocab_size) at every position when `where` is None.
        """
        return self.logits_at(self.canvas_hidden(tokens, cache, canvas_valid, where=where))
