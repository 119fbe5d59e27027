"""The forward (masking) process of masked diffusion and its loss weights.

Every canvas position, EOS padding and the language token included, becomes [MASK] independently
with probability t, drawn per sequence. Two phases:

- A (from scratch, MDLM / LLaDA): t = (1 - eps) u + eps, u ~ U(0, 1); a sequence's loss is the sum
  over its masked positions of CE / t, divided by its number of canvas positions. This is the
  ELBO weighting: in expectation every position counts once, whatever t is.
- B (high-mask specialization): t ~ U(high_low, high_high); a sequence's loss is the plain mean
  CE over its masked positions. Decoding starts from an all-[MASK] canvas, so B trains where
  inference happens.
- Block steps (`block_share`, drawn among the sequences phase B leaves): the canvas as one step
  of left-to-right block decoding reads it (`block_step_masks`); the loss is the mean CE over
  the drawn block's masked positions.

The batch loss is the mean of the per-sequence losses, so the two phases can share one batch.
All functions are pure (randomness comes from an explicit generator). Draws happen on the device
of the tokens (with a generator of that device), so corrupting a batch never waits on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from whisfusion.config import ScheduleConfig


def draw_u(
    batch: int,
    antithetic: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B,) uniforms in [0, 1) on `device`. Antithetic: stratified, one draw in each of B equal
    strata."""
    u = torch.rand(batch, generator=generator, device=device)
    if antithetic:
        # u_i = (i + U_i) / B, shuffled so the stratum does not follow the batch order
        u = (torch.arange(batch, device=device) + u) / batch
        u = u[torch.randperm(batch, generator=generator, device=device)]
    return u


def phase_a_t(u: torch.Tensor, eps: float) -> torch.Tensor:
    """t = (1 - eps) u + eps in [eps, 1)."""
    return (1.0 - eps) * u + eps


def phase_b_t(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """t ~ U(low, high) from u ~ U(0, 1)."""
    return low + (high - low) * u


def mask_positions(
    t: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, L) bool: each valid position masked with probability t[b]. t: (B,), valid: (B, L)."""
    draw = torch.rand(valid.shape, generator=generator, device=valid.device)
    return (draw < t[:, None]) & valid


def content_positions(tokens: torch.Tensor, valid: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, L) bool: each canvas's transcript and the first EOS after it (the positions a
    length-first decoding leaves to its steps), valid positions only."""
    is_eos = tokens == eos_id
    seen = is_eos.cumsum(dim=1)
    return valid & ((seen == 0) | ((seen == 1) & is_eos))


def block_step_masks(
    t: torch.Tensor,
    content: torch.Tensor,
    blocks: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The canvas as one step of left-to-right block decoding reads it (LLaDA's
    semi-autoregressive decoding, `decode.blocks`): each sequence's content positions (B, L)
    bool, contiguous from position 0, are cut into `blocks` equal blocks and one block k is
    drawn; the blocks before k are given, the blocks after it masked, and each position of
    block k is masked with probability t[b] (t: (B,)).

    Returns:
        masked: (B, L) bool, the input's [MASK] positions.
        read: (B, L) bool, the masked positions of block k: the ones such a step predicts.
    """
    b, length = content.shape
    count = content.sum(dim=1, keepdim=True).clamp(min=1)
    block_of = torch.arange(length, device=content.device)[None, :] * blocks // count
    k = torch.randint(0, blocks, (b, 1), generator=generator, device=content.device)
    draw = torch.rand(content.shape, generator=generator, device=content.device)
    read = content & (block_of == k) & (draw < t[:, None])
    return read | (content & (block_of > k)), read


def phase_a_weights(t: torch.Tensor, masked: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, L) weights 1 / (t * L_b) on masked positions, L_b = the sequence's canvas length."""
    length = valid.sum(dim=1, keepdim=True).clamp(min=1)
    return masked.float() / (t[:, None] * length)


def phase_b_weights(masked: torch.Tensor) -> torch.Tensor:
    """(B, L) weights 1 / (#masked in the sequence) on masked positions (0 if none masked)."""
    count = masked.sum(dim=1, keepdim=True).clamp(min=1)
    return masked.float() / count


def diffusion_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Mean over sequences of the weighted CE.

    Args:
        logits: (P, V) at the P positions where the weight is non-zero (the masked ones), in
            row-major order, as a decoder returns them for `where = weights > 0`; unmasked
            positions cost nothing and cannot leak into the loss.
        targets, weights: (B, L).
    """
    sel = weights > 0
    picked = targets[sel]
    if logits.shape[0] != picked.shape[0]:
        raise ValueError(
            f"{logits.shape[0]} rows of logits for {picked.shape[0]} positions with a loss weight"
        )
    ce = F.cross_entropy(logits.float(), picked, reduction="none")
    return (ce * weights[sel]).sum() / targets.shape[0]


@dataclass(frozen=True)
class Corruption:
    """One draw of the forward process for a batch.

    x_t: (B, L) input canvas with [MASK] ids; masked: (B, L) bool; weights: (B, L) loss
    weights; t: (B,) mask rates; high: (B,) bool, True where phase B was used; block: (B,)
    bool, True where the sequence was masked as a block decoding step reads it.
    """

    x_t: torch.Tensor
    masked: torch.Tensor
    weights: torch.Tensor
    t: torch.Tensor
    high: torch.Tensor
    block: torch.Tensor


class MaskSchedule:
    """Chooses the phase per sequence (switch step or mixture) and corrupts a batch;
    `eos_id` is needed with `block_share` > 0 (it marks where a transcript ends)."""

    def __init__(self, cfg: ScheduleConfig, eos_id: int | None = None):
        if not 0.0 <= cfg.high_low <= cfg.high_high <= 1.0:
            raise ValueError(
                "schedule: need 0 <= high_low <= high_high <= 1, "
                f"got {cfg.high_low}, {cfg.high_high}"
            )
        if not 0.0 <= cfg.high_mask_share <= 1.0:
            raise ValueError(
                f"schedule.high_mask_share must be in [0, 1], got {cfg.high_mask_share}"
            )
        if cfg.switch_step >= 0 and cfg.high_mask_share > 0:
            raise ValueError(
                f"schedule.switch_step={cfg.switch_step} and schedule.high_mask_share="
                f"{cfg.high_mask_share} are two ways to choose phase B: set switch_step=-1 to "
                "mix the phases, or high_mask_share=0 to switch at a step"
            )
        if cfg.block_share > 0:
            if cfg.switch_step >= 0 or cfg.high_mask_share + cfg.block_share > 1:
                raise ValueError(
                    f"schedule.block_share={cfg.block_share} needs switch_step=-1 and "
                    f"high_mask_share + block_share <= 1 (high_mask_share={cfg.high_mask_share}, "
                    f"switch_step={cfg.switch_step})"
                )
            if cfg.blocks < 1 or eos_id is None:
                raise ValueError(
                    f"schedule.block_share > 0 needs schedule.blocks >= 1 (got {cfg.blocks}) "
                    "and the tokenizer's EOS id"
                )
        self.cfg, self.eos_id = cfg, eos_id

    def phase_b_mask(
        self,
        batch: int,
        step: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """(B,) bool on `device`: which sequences use phase B at optimizer step `step`."""
        if self.cfg.switch_step >= 0:
            return torch.full((batch,), step >= self.cfg.switch_step, device=device)
        return torch.rand(batch, generator=generator, device=device) < self.cfg.high_mask_share

    def corrupt(
        self,
        tokens: torch.Tensor,
        valid: torch.Tensor,
        mask_id: int,
        step: int,
        generator: torch.Generator | None = None,
    ) -> Corruption:
        """Mask a batch of target canvases: tokens, valid (B, L) -> Corruption on their device.

        `generator` must be a generator of that device (or None: the device's default one).
        """
        b, dev = tokens.shape[0], tokens.device
        high = self.phase_b_mask(b, step, generator, dev)
        u = draw_u(b, self.cfg.antithetic, generator, dev)
        t = torch.where(
            high, phase_b_t(u, self.cfg.high_low, self.cfg.high_high), phase_a_t(u, self.cfg.eps)
        )
        masked = mask_positions(t, valid, generator)
        weights = torch.where(
            high[:, None], phase_b_weights(masked), phase_a_weights(t, masked, valid)
        )
        block = torch.zeros_like(high)
        if self.cfg.block_share > 0:  # drawn only then: runs without it keep their masks
            # of the sequences phase B leaves (checked: high_mask_share < 1 here)
            share = self.cfg.block_share / (1.0 - self.cfg.high_mask_share)
            block = ~high & (torch.rand(b, generator=generator, device=dev) < share)
            content = content_positions(tokens, valid, self.eos_id)
            in_block, read = block_step_masks(t, content, self.cfg.blocks, generator)
            masked = torch.where(block[:, None], in_block, masked)
            weights = torch.where(block[:, None], phase_b_weights(read), weights)
        x_t = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
        return Corruption(x_t, masked, weights, t, high, block)
