"""Parallel Diffusion Decoding: fill a masked canvas in T parallel steps, K candidates at once.

Everything here is a pure function over a `denoise(tokens, cache, where) -> logits` callable:

    denoise(tokens: LongTensor (N*K, L), cache, where: BoolTensor (N*K, L))
        -> FloatTensor (P, V)

`where` marks the P positions whose predictions the step can use (the still-masked ones it may
commit); the denoiser returns their logits alone, in `where`'s row-major order (the logits of
every position indexed by `where`), so it never computes or writes the others.

Rows are utterance-major (row n*K + k is candidate k of utterance n), so the decoder can group
the K rows of one utterance onto its cached cross-attention; the cache is passed through
untouched. V is the head size; [MASK] = `mask_id` lies outside it and is never predicted.

Position kinds on the canvas (N, L):
    invalid  `valid` False (beyond an utterance's own canvas in a padded batch): EOS, never
             predicted, never changed, never part of any step budget.
    given    valid and not [MASK] in the input canvas (a language token the user supplied):
             never changed.
    free     valid and [MASK] in the input canvas: the sampler fills these.

Remasking strategies:
    low_confidence  (LLaDA) Each step predicts every still-masked free position and commits the
                    most confident ones. Each row's free positions are spread evenly over the T
                    steps (the first `m % T` steps take one more), so after T steps nothing is
                    masked. Committed tokens never change. With `blocks` > 1 (LLaDA's
                    semi-autoregressive decoding) the free positions are cut into that many
                    contiguous blocks, filled left to right, each during its share of the T
                    steps (`block_budgets`): the end of the transcript (where its EOS padding
                    starts) is decided after its beginning. With `eos_threshold` > 0 the
                    length comes first, as in Mask-Predict: the first step commits the tail
                    of the canvas it reads as EOS padding with at least that probability
                    (`eos_tail`), and the budgets of all T steps go to the positions before
                    it, so the transcript's own tokens get the steps. With `tail_margin` the
                    canvas is then cut that many positions past the batch's last position
                    not read as padding (`kept_width`): later steps run on the transcript and
                    a short tail, as the canvas of a fast speaker's clip has it. With
                    `commit_threshold` > 0 (Fast-dLLM's parallel decoding) a step commits,
                    besides its budget, every position it predicts with at least that
                    probability: easy stretches take one step, and the loop ends as soon as
                    nothing is masked.
    random          (v1) The input of step s has a share rho_s of each row's free positions
                    masked (exactly round(rho_s * free), drawn uniformly, independently per
                    row; positions still [MASK] stay masked). The model predicts them and the
                    predictions replace exactly those positions, so the canvas after every step
                    holds no [MASK]. rho_s = schedule[s], the last entry repeating; v1's
                    [1.0, 0.9, 0.85, 0.8] starts from the all-mask canvas and keeps a fifth of the
                    previous tokens at the last step.

Candidates: row 0 of each utterance is greedy; rows 1..K-1 draw each prediction by Gumbel-max
at `temperature`, so the K candidates differ from step 1 on (step 1 sees the same all-mask input
in every row). temperature = 0 makes every row greedy: with low_confidence the K candidates are
then identical; with random they still differ through their own re-mask draws (v1's only source
of diversity).

Logit filters (`LogitFilter`, e.g. the per-language vocabulary of whisfusion.language_vocab)
change every step's logits before any token is chosen or scored.

Early exit: the loop stops before T steps once no further step can change the canvas:
low_confidence when no position is masked (committed tokens stay); random when the canvas holds
no [MASK] and the last step reproduced the canvas of the step before (a fixed point).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from whisfusion.canvas import kept_width, pad_canvases

if TYPE_CHECKING:
    from whisfusion.config import DecodeConfig
    from whisfusion.options import DecodeOptions

Denoise = Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]


class LogitFilter(Protocol):
    """Changes the logits of every step before a token is chosen (e.g. blocks tokens)."""

    def apply(self, logits: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """logits (P, V) at the positions `where` marks on the utterance-major rows (N*K, L)
        -> the same shape."""


REMASKING = ("low_confidence", "random")

# Elements of float64 Gumbel noise drawn at once (about 256 MB): bounds the sampling memory for
# large batches x long canvases x large vocabularies, whose full-size float64 copy could exceed
# the logits' own size several times over.
_NOISE_CHUNK = 1 << 25


@dataclass(frozen=True)
class PDDResult:
    # (N, K, L) final canvases; invalid positions EOS, no [MASK].
    tokens: torch.Tensor
    # (N, K, L) model probability of each token when it was last predicted; 1.0 on given and
    # invalid positions (not predicted).
    confidence: torch.Tensor
    # (N, L) bool, the `valid` mask the canvases were decoded with.
    valid: torch.Tensor
    # Denoiser calls made (<= T; fewer after an early exit).
    steps_run: int
    # (N, K, L) canvas after each step (low_confidence: uncommitted positions still [MASK]),
    # or None unless requested.
    trajectory: list[torch.Tensor] | None


def canvas_for(
    lengths: Sequence[int],
    mask_id: int,
    eos_id: int,
    lang_ids: Sequence[int | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start canvases for a batch: `[<lang> or MASK] MASK ... MASK`, EOS beyond each length.

    Args:
        lengths: canvas length L_n of each utterance (>= 1).
        lang_ids: language-token id per utterance, None where the decoder predicts it.
    Returns:
        canvas: (N, max L_n) long; valid: (N, max L_n) bool.
    """
    if lang_ids is not None and len(lang_ids) != len(lengths):
        raise ValueError(f"{len(lang_ids)} language ids for {len(lengths)} utterances")
    rows = []
    for n, length in enumerate(lengths):
        if length < 1:
            raise ValueError(f"utterance {n}: canvas length must be >= 1, got {length}")
        row = torch.full((int(length),), mask_id, dtype=torch.long)
        if lang_ids is not None and lang_ids[n] is not None:
            row[0] = lang_ids[n]
        rows.append(row)
    return pad_canvases(rows, eos_id)


def options_from_config(cfg: DecodeOptions | DecodeConfig) -> dict[str, Any]:
    """The `pdd_decode` keyword arguments that come from decoding options."""
    return dict(
        candidates=cfg.candidates,
        steps=cfg.steps,
        remasking=cfg.remasking,
        random_schedule=list(cfg.random_schedule),
        temperature=cfg.temperature,
        blocks=cfg.blocks,
        eos_threshold=cfg.eos_threshold,
        commit_threshold=cfg.commit_threshold,
    )


def on_device(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator on `device`: `generator` itself, or one seeded from it when it lives elsewhere.

    Drawing the (rows, L, V) Gumbel noise on the CPU for a GPU decoder would cost more than the
    decoder itself; one seed drawn from `generator` keeps the result a function of its state.
    """
    if generator is None or generator.device == device:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


def gumbel_argmax(
    logits: torch.Tensor, where: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """A sample of softmax(logits / temperature) per position by Gumbel-max: logits (P, V) at
    the positions `where` ((R, L) bool) marks -> (P,) token ids.

    argmax(logits + temperature * g), g = -log(-log u), equals LLaDA's exp(logits) / (-log u)^T
    without the overflow-prone exp. The noise is float64 as in LLaDA: low-precision Gumbel
    noise cuts off its tail, which acts like a lower temperature and lowers sample quality
    (arXiv:2409.02908). It is drawn over the rows' whole (L, V), a chunk of rows at a time, and
    read at `where`: a seed gives the same samples whichever positions a step reads.
    `generator` must live on the logits' device.
    """
    rows, length = where.shape
    vocab = logits.shape[-1]
    step = max(1, _NOISE_CHUNK // max(1, length * vocab))
    out, first = [], 0
    for start in range(0, rows, step):
        chunk = where[start : start + step]
        count = int(chunk.sum())
        part = logits[first : first + count].to(torch.float64)
        u = torch.rand(
            (chunk.shape[0], length, vocab),
            generator=generator,
            device=logits.device,
            dtype=torch.float64,
        )[chunk]
        noise = -torch.log(-torch.log(u))
        out.append((part + temperature * noise).argmax(dim=-1))
        first += count
    return torch.cat(out)


def predict(
    logits: torch.Tensor,
    sampled_rows: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None,
    where: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token and its model probability at the positions read.

    Args:
        logits: (P, V) at the positions of `where`, in its row-major order.
        sampled_rows: (R,) bool, rows drawn by Gumbel-max; the others take the argmax.
        where: (R, L) bool, the positions whose prediction is read: a step reads its
            still-masked positions, a shrinking part of the canvas.
    Returns:
        tokens: (R, L) long; prob: (R, L) float32 probability under softmax(logits) (no
        temperature: the model's own belief in the chosen token); both 0 outside `where`.
    """
    logits = logits.float()
    chosen = logits.argmax(dim=-1)  # (P,)
    if temperature > 0 and bool(sampled_rows.any()):
        drawn_at = sampled_rows[:, None].expand_as(where)[where]  # (P,) in a sampled row
        chosen[drawn_at] = gumbel_argmax(
            logits[drawn_at], where[sampled_rows], temperature, generator
        )
    tokens = torch.zeros(where.shape, dtype=torch.long, device=logits.device)
    tokens[where] = chosen
    prob = torch.zeros(where.shape, dtype=torch.float32, device=logits.device)
    prob[where] = (logits.gather(-1, chosen[:, None])[:, 0] - torch.logsumexp(logits, -1)).exp()
    return tokens, prob


def block_budgets(free: torch.Tensor, steps: int, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA's semi-autoregressive schedule: the free positions of each row, in order, cut into
    `blocks` contiguous runs of near-equal size, the T steps into `blocks` runs of near-equal
    length; block j is filled during its own steps, split evenly over them (the first ones take
    one more). blocks = 1 is the plain even split over the whole canvas.

    Args:
        free: (R, L) bool, the positions to fill.
        steps: T >= blocks.
    Returns:
        budgets: (R, T) long, positions to commit at each step (rows sum to free.sum(1));
        block: (R, L) long, the block each free position belongs to (`blocks` elsewhere).
    """
    if not 1 <= blocks <= steps:
        raise ValueError(f"blocks must be in [1, steps={steps}], got {blocks}")
    m = free.sum(dim=1, keepdim=True)
    rank = free.long().cumsum(dim=1) - 1
    block = torch.where(free, rank * blocks // m.clamp(min=1), blocks)
    counts = torch.zeros(free.shape[0], blocks + 1, dtype=torch.long, device=free.device)
    counts.scatter_add_(1, block, torch.ones_like(block))
    s = torch.arange(steps, device=free.device)
    step_block = s * blocks // steps  # (T,) the block each step fills
    first = torch.searchsorted(step_block, torch.arange(blocks, device=free.device))
    length = torch.bincount(step_block, minlength=blocks)  # steps per block
    c = counts[:, step_block]  # (R, T) size of the block each step fills
    k = length[step_block]
    budgets = c // k + ((s - first[step_block]) < c % k).long()
    return budgets, block


def eos_tail(
    pred: torch.Tensor, prob: torch.Tensor, free: torch.Tensor, eos_id: int, threshold: float
) -> torch.Tensor:
    """The EOS padding a prediction is sure of: (R, L) tensors -> (R, L) bool, True on the free
    positions from which on every free position is predicted EOS with prob >= threshold."""
    sure = free & (pred == eos_id) & (prob >= threshold)
    unsure_after = (free & ~sure).flip(1).cumsum(1).flip(1)  # unsure positions at or after p
    return sure & (unsure_after == 0)


def _rank_desc(score: torch.Tensor) -> torch.Tensor:
    """Rank of each entry within its row, 0 = largest; ties keep position order."""
    order = score.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return ranks


def _check(canvas, valid, mask_id, candidates, steps, remasking, random_schedule, temperature):
    if canvas.dim() != 2 or valid.shape != canvas.shape:
        raise ValueError(
            f"canvas must be (N, L) and valid the same shape; got {tuple(canvas.shape)} and "
            f"{tuple(valid.shape)}"
        )
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")
    if bool((~valid[:, 0]).any()):
        raise ValueError("every canvas needs at least one valid position")
    if candidates < 1 or steps < 1:
        raise ValueError(f"candidates and steps must be >= 1, got {candidates} and {steps}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {', '.join(REMASKING)}; got '{remasking}'")
    if remasking == "random" and (
        not random_schedule or any(not 0.0 <= r <= 1.0 for r in random_schedule)
    ):
        raise ValueError(f"random_schedule needs shares in [0, 1], got {list(random_schedule)}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if bool((canvas[valid] > mask_id).any()):
        raise ValueError(f"canvas holds ids above the [MASK] id {mask_id}")


def check_order(
    steps: int, remasking: str, blocks: int, eos_threshold: float, commit_threshold: float
) -> None:
    """Check the options that order the commits of low_confidence remasking (the messages name
    their `decode.*` keys)."""
    if not 1 <= blocks <= steps:
        raise ValueError(f"decode.blocks must be in [1, decode.steps={steps}], got {blocks}")
    if blocks > 1 and remasking != "low_confidence":
        raise ValueError(f"decode.blocks > 1 needs low_confidence remasking, got '{remasking}'")
    for key, value in (("eos_threshold", eos_threshold), ("commit_threshold", commit_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"decode.{key} must be in [0, 1], got {value}")
        if value > 0 and remasking != "low_confidence":
            raise ValueError(f"decode.{key} > 0 needs low_confidence remasking, got '{remasking}'")


@torch.no_grad()
def pdd_decode(
    denoise: Denoise,
    cache: Any,
    canvas: torch.Tensor,
    valid: torch.Tensor,
    *,
    mask_id: int,
    eos_id: int,
    candidates: int,
    steps: int,
    remasking: str,
    random_schedule: Sequence[float],
    temperature: float,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    logit_filters: Sequence[LogitFilter] = (),
    blocks: int = 1,
    eos_threshold: float = 0.0,
    tail_margin: int | None = None,
    commit_threshold: float = 0.0,
) -> PDDResult:
    """Decode K candidate transcripts per utterance in at most `steps` denoiser calls.

    Args:
        denoise: (tokens (N*K, L) long, cache, where (N*K, L) bool) -> (P, V) logits at the
            P positions of `where`, in its row-major order; V <= mask_id.
        canvas: (N, L) start canvases (`canvas_for`): given tokens or [MASK] on valid positions.
        valid: (N, L) bool, False beyond each utterance's canvas (forced to `eos_id`).
        candidates: K rows per utterance; row 0 greedy, rows >= 1 sampled at `temperature`.
        steps: T, the most denoiser calls.
        remasking: "low_confidence" or "random" (module docstring).
        random_schedule: masked share of the free positions at the input of each step (random
            only); the last entry repeats.
        temperature: Gumbel temperature of rows >= 1; 0 = every row greedy.
        generator: source of all randomness (same inputs and seed -> same output); None uses
            torch's global generator. Best on the canvas's device (else it seeds one there).
        return_trajectory: keep the (N, K, L) canvas after each step.
        logit_filters: applied in order to the logits of every step (`LogitFilter`).
        blocks: semi-autoregressive blocks, filled left to right (low_confidence only; 1 = the
            whole canvas at once).
        eos_threshold: commit the first step's sure EOS tail before the budgets are set
            (low_confidence only; 0 = off).
        tail_margin: with `eos_threshold`, cut the canvas after the first step to this many
            positions past the batch's last one not read as padding (`kept_width`); the
            tokens and confidences returned are padded back to L. None keeps the width (a
            compiled denoiser's static shapes).
        commit_threshold: also commit every position predicted with at least this
            probability at a step (low_confidence only; 0 = off).
    """
    _check(canvas, valid, mask_id, candidates, steps, remasking, random_schedule, temperature)
    check_order(steps, remasking, blocks, eos_threshold, commit_threshold)
    n, length = canvas.shape
    valid_rows = valid.repeat_interleave(candidates, dim=0)
    x = torch.where(valid, canvas, eos_id).repeat_interleave(candidates, dim=0)
    free = valid_rows & (x == mask_id)
    sampled_rows = torch.arange(n * candidates, device=x.device) % candidates > 0
    gen = on_device(generator, x.device)
    confidence = torch.ones(x.shape, dtype=torch.float32, device=x.device)
    # low_confidence's schedule; length first sets it once the first step has read the length
    budgets = block = None
    if remasking == "low_confidence" and eos_threshold == 0:
        budgets, block = block_budgets(free, steps, blocks)
    n_free = free.sum(dim=1, keepdim=True).float()
    trajectory: list[torch.Tensor] = []
    steps_run = 0
    width = length  # positions still decoded; the cut-off rest is committed EOS padding

    for s in range(steps):
        masked = x == mask_id  # only free positions are ever [MASK]
        if remasking == "random":
            rho = float(random_schedule[min(s, len(random_schedule) - 1)])
            count = torch.floor(rho * n_free + 0.5)
            draw = torch.where(free, torch.rand(x.shape, generator=gen, device=x.device), -1.0)
            masked = masked | (free & (_rank_desc(draw) < count))
        x_in = torch.where(masked, mask_id, x)

        length_first = s == 0 and eos_threshold > 0
        if remasking == "low_confidence" and not length_first:
            need = masked & (block == s * blocks // steps)
        else:
            need = masked
        logits = denoise(x_in, cache, need)
        read = int(need.sum())
        if logits.dim() != 2 or logits.shape[0] != read or logits.shape[-1] > mask_id:
            raise ValueError(
                f"denoise returned logits {tuple(logits.shape)}; expected ({read}, V), the "
                f"positions of `where`, with V <= mask id {mask_id}"
            )
        for logit_filter in logit_filters:
            logits = logit_filter.apply(logits, need)
        pred, prob = predict(logits, sampled_rows, temperature, gen, need)
        steps_run += 1
        if length_first:
            tail = eos_tail(pred, prob, masked, eos_id, eos_threshold)
            x_in = torch.where(tail, eos_id, x_in)
            confidence = torch.where(tail, prob, confidence)
            masked = masked & ~tail
            if tail_margin is not None:
                width = kept_width(valid_rows & ~tail, tail_margin)
                x_in, masked, pred, prob = (t[:, :width] for t in (x_in, masked, pred, prob))
            budgets, block = block_budgets(masked, steps, blocks)
            need = masked & (block == 0)

        if remasking == "low_confidence":
            score = torch.where(need, prob, -1.0)
            commit = _rank_desc(score) < budgets[:, s : s + 1]
            if commit_threshold > 0:
                commit = commit | (prob >= commit_threshold)
            commit = need & commit
        else:
            commit = masked
        x_new = torch.where(commit, pred, x_in)
        confidence[:, :width] = torch.where(commit, prob, confidence[:, :width])
        if return_trajectory:
            full = F.pad(x_new, (0, length - width), value=eos_id)
            trajectory.append(full.view(n, candidates, length))

        no_mask = not bool((x_new == mask_id).any())
        fixed_point = remasking == "low_confidence" or bool(torch.equal(x_new, x))
        x = x_new
        if no_mask and fixed_point:
            break

    x = F.pad(x, (0, length - width), value=eos_id)
    return PDDResult(
        tokens=x.view(n, candidates, length),
        confidence=confidence.view(n, candidates, length),
        valid=valid,
        steps_run=steps_run,
        trajectory=trajectory if return_trajectory else None,
    )
