"""Which rows a denoising call runs, and the self-attention keys/values it leaves to the next.

Two savings, shared by both decoders (`whisfusion.decoder`, `whisfusion.whisper_decoder`):

- the last block runs only at the positions whose logits are read: nothing reads its other
  outputs (exact);
- between the denoising steps of one decoding (`decode.kv_refresh`, as dKV-Cache and Fast-dLLM
  reuse them) a step runs only the positions it reads and those whose token changed since the
  last call (the ones just committed); every other position attends with the keys and values of
  its last computation (exact when nothing changed, stale otherwise). Every `refresh`-th call
  is a full pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ReusedKeys:
    """The self-attention keys and values one denoising call leaves to the next of the same
    decoding; set on a decoder's cross cache (`.reuse`) by `Whisfusion.decode_features`."""

    refresh: int
    calls: int = 0
    ids: torch.Tensor | None = None  # (R, L') the token ids of the last call
    keys: list[torch.Tensor] = field(default_factory=list)  # per block (R, H, L', Dh)
    values: list[torch.Tensor] = field(default_factory=list)

    def holds(self, ids: torch.Tensor) -> bool:
        """Whether the next call on ids (R, L) may reuse the kept keys: not a full pass, the
        same rows, a canvas no wider than the last (the cut after the length step)."""
        return (
            self.ids is not None
            and self.calls % self.refresh != 0
            and self.ids.shape[0] == ids.shape[0]
            and self.ids.shape[1] >= ids.shape[1]
        )

    def cut(self, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The kept keys and values of the first `length` positions (copied once when the
        canvas was cut, so that a step writes into whole tensors)."""
        if self.ids.shape[1] > length:
            self.keys = [k[:, :, :length].contiguous() for k in self.keys]
            self.values = [v[:, :, :length].contiguous() for v in self.values]
        return self.keys, self.values

    def step(self, ids: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.calls += 1
        self.ids, self.keys, self.values = ids, keys, values


@dataclass
class StepRows:
    """The rows one call runs.

    index: (R, Q') long, the positions whose rows run in every block, or None for all L.
    query: (R, Q) long, the rows (of those that run) the last block outputs, or None for all.
    out: (R, Q) bool, False on `query`'s repeats: the last block's `x[out]` is `x[where]`.
    past: per block (keys, values) (R, H, L, Dh) of the last call, into which this call's rows
        are written; empty when `index` is None.
    """

    index: torch.Tensor | None = None
    query: torch.Tensor | None = None
    out: torch.Tensor | None = None
    past: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def past_of(self, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(index, keys, values) for a block's self-attention, or None on a full pass."""
        return None if self.index is None else (self.index, *self.past[block])


def step_rows(ids: torch.Tensor, read: torch.Tensor | None, reuse: ReusedKeys | None) -> StepRows:
    """The rows a call on ids (R, L) runs when it reads the positions `read` ((R, L) bool, or
    None for every position's output) with the kept keys `reuse` (or None)."""
    if read is None:
        return StepRows()
    if reuse is not None and reuse.holds(ids):
        keys, values = reuse.cut(ids.shape[1])
        index, kept = query_positions((ids != reuse.ids[:, : ids.shape[1]]) | read)
        query, out = query_positions(read.gather(1, index) & kept)
        return StepRows(index, query, out, list(zip(keys, values, strict=True)))
    query, out = query_positions(read)
    return StepRows(query=query, out=out)


def written_into(
    past: tuple[torch.Tensor, torch.Tensor, torch.Tensor], k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """This call's keys and values k, v (R, H, Q', Dh) written at their positions into the
    last call's (R, H, L, Dh) (`StepRows.past_of`): every row then attends over all L."""
    index, keys, values = past
    at = index[:, None, :, None].expand_as(k)
    return keys.scatter_(2, at, k), values.scatter_(2, at, v)


def query_positions(where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """where (R, L) bool -> index (R, Q) long, each row's marked positions in order (Q the
    most any row has; a row with fewer repeats its last one), and kept (R, Q) bool, False on
    those repeats: `x.gather(index)[kept]` is `x[where]`."""
    count = where.sum(1, keepdim=True)
    first = torch.argsort((~where).to(torch.uint8), dim=1, stable=True)  # marked ones first
    q = max(int(count.max()), 1)
    slot = torch.arange(q, device=where.device).expand(where.shape[0], q)
    return first.gather(1, torch.minimum(slot, (count - 1).clamp(min=0))), slot < count


def at_rows(t: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor | None:
    """The query positions (R, Q) of t (R, L, D), or of a self-attention mask: (L, L) or
    (R, 1, L, L) gives (R, 1, Q, L); a (R, 1, 1, L) mask or None holds for every query."""
    if t is None or (t.dim() == 4 and t.shape[2] == 1):
        return t
    if t.dim() == 2:  # (L, L): the same for every row
        return t[query][:, None]
    if t.dim() == 4:
        index = query[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3])
        return t.expand(query.shape[0], -1, -1, -1).gather(2, index)
    return t.gather(1, query[..., None].expand(-1, -1, t.shape[-1]))


def cross_mask_rows(mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """A cross-attention mask of K rows per utterance folded into the query length, (N, H,
    K*L, S), at the positions query (N*K, Q) -> (N, H, K*Q, S); an (N, 1, 1, S) mask holds for
    every query as it is."""
    if mask.shape[2] == 1:
        return mask
    n, heads, _, frames = mask.shape
    rows, q = query.shape
    k = rows // n
    at = query.view(n, 1, k, q, 1).expand(n, heads, k, q, frames)
    return mask.reshape(n, heads, k, -1, frames).gather(3, at).view(n, heads, k * q, frames)
