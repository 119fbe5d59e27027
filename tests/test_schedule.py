import math

import pytest
import torch

from whisfusion.config import ScheduleConfig
from whisfusion.schedule import (
    MaskSchedule,
    block_step_masks,
    content_positions,
    diffusion_loss,
    draw_u,
    phase_a_t,
    phase_a_weights,
    phase_b_t,
)

B, L, MASK = 20000, 24, 99


def _batch():
    tokens = torch.randint(0, MASK, (B, L))
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[: B // 2, 16:] = False  # half the canvases are shorter
    return tokens, valid


def test_phase_a_statistics():
    g = torch.Generator().manual_seed(0)
    tokens, valid = _batch()
    c = MaskSchedule(ScheduleConfig(eps=1e-3)).corrupt(tokens, valid, MASK, 0, g)
    assert not c.high.any()
    assert float(c.t.min()) >= 1e-3 and float(c.t.max()) < 1.0
    assert float(c.t.mean()) == pytest.approx(0.5, abs=0.01)
    # masked share given t equals t: regress the per-sequence ratio on t
    ratio = c.masked.sum(1) / valid.sum(1)
    assert float((ratio - c.t).mean()) == pytest.approx(0.0, abs=0.005)
    # weights 1/(t L_b) on masked positions -> sum per sequence is 1 in expectation
    assert float(c.weights.sum(1).mean()) == pytest.approx(1.0, abs=0.03)
    w = c.weights[c.masked]
    expect = (1 / (c.t[:, None] * valid.sum(1, keepdim=True))).expand(B, L)[c.masked]
    torch.testing.assert_close(w, expect)
    assert (c.weights[~c.masked] == 0).all()
    assert (c.x_t[c.masked] == MASK).all() and torch.equal(c.x_t[~c.masked], tokens[~c.masked])
    assert not c.masked[~valid].any()  # padding beyond a canvas is never masked


def test_phase_b_statistics():
    g = torch.Generator().manual_seed(1)
    tokens, valid = _batch()
    c = MaskSchedule(ScheduleConfig(switch_step=100)).corrupt(tokens, valid, MASK, 100, g)
    assert c.high.all()
    assert float(c.t.min()) >= 0.7 and float(c.t.max()) <= 1.0
    assert float(c.t.mean()) == pytest.approx(0.85, abs=0.005)
    ratio = c.masked.sum() / valid.sum()
    assert float(ratio) == pytest.approx(0.85, abs=0.005)
    has = c.masked.any(1)
    torch.testing.assert_close(c.weights.sum(1)[has], torch.ones(int(has.sum())))  # mean CE


def test_switch_and_mixture():
    s = MaskSchedule(ScheduleConfig(switch_step=10))
    assert not s.phase_b_mask(4, 9).any() and s.phase_b_mask(4, 10).all()
    g = torch.Generator().manual_seed(2)
    mix = MaskSchedule(ScheduleConfig(high_mask_share=0.8)).phase_b_mask(20000, 0, g)
    assert float(mix.float().mean()) == pytest.approx(0.8, abs=0.01)
    with pytest.raises(ValueError, match="high_mask_share"):
        MaskSchedule(ScheduleConfig(high_mask_share=1.5))


def test_antithetic_draws_are_stratified():
    g = torch.Generator().manual_seed(3)
    u = draw_u(64, antithetic=True, generator=g)
    counts = torch.histc(u, bins=64, min=0, max=1)
    assert (counts == 1).all()
    # lower variance of the batch mean than iid draws
    means_a = torch.stack([draw_u(16, True, g).mean() for _ in range(500)])
    means_i = torch.stack([draw_u(16, False, g).mean() for _ in range(500)])
    assert means_a.var() < means_i.var() / 5


def test_time_maps():
    u = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(phase_a_t(u, 1e-3), torch.tensor([1e-3, 0.5005, 1.0]))
    torch.testing.assert_close(phase_b_t(u, 0.7, 1.0), torch.tensor([0.7, 0.85, 1.0]))


def test_loss_is_the_weighted_ce_of_the_masked_positions_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 10)
    targets = torch.randint(0, 10, (2, 6))
    masked = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    t = torch.tensor([0.5, 0.25])
    w = phase_a_weights(t, masked, torch.ones(2, 6, dtype=torch.bool))
    loss = diffusion_loss(logits[w > 0], targets, w)  # as a decoder returns them for `where`
    ce = torch.nn.functional.cross_entropy(
        logits.view(-1, 10), targets.view(-1), reduction="none"
    ).view(2, 6)
    expect = ((ce * masked).sum(1) / (t * 6)).mean()
    assert math.isclose(loss.item(), float(expect), rel_tol=1e-5)
    with pytest.raises(ValueError, match="12 rows of logits for 5 positions"):
        diffusion_loss(logits.view(12, 10), targets, w)  # every position, not the masked ones


def test_switch_step_with_a_mixture_is_refused():
    with pytest.raises(ValueError, match="switch_step=10 and schedule.high_mask_share=0.5"):
        MaskSchedule(ScheduleConfig(switch_step=10, high_mask_share=0.5))


def test_content_is_the_transcript_and_its_first_eos():
    eos = 7
    tokens = torch.tensor([[1, 2, 7, 7, 7], [3, 7, 4, 7, 7], [1, 2, 3, 4, 5]])
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert content_positions(tokens, valid, eos).int().tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
    ]


def test_block_step_masks_give_earlier_blocks_and_mask_later_ones():
    """One drawn block per sequence: everything before it given, everything after it (within
    the content) masked, its own positions masked at rate t and read; nothing outside the
    content is touched."""
    g = torch.Generator().manual_seed(3)
    b, length, blocks = 4000, 20, 4
    count = torch.randint(4, 17, (b, 1), generator=g)
    content = torch.arange(length)[None, :] < count
    t = torch.rand(b, generator=g)
    masked, read = block_step_masks(t, content, blocks, g)
    assert not (masked & ~content).any() and not (read & ~masked).any()
    block_of = torch.arange(length)[None, :] * blocks // count
    first = torch.where(read, block_of, blocks).amin(1)  # the drawn block, where anything is read
    rows = first < blocks
    k = first[:, None]
    assert (read[rows] == (read & (block_of == k))[rows]).all()  # reads one block
    assert (masked & (block_of < k))[rows].sum() == 0  # earlier blocks given
    later = content & (block_of > k)
    assert (masked[rows] | ~later[rows]).all()  # later blocks masked
    # t = 1: the whole drawn block is read; t = 1/2: half of a block on average
    full, read_all = block_step_masks(torch.ones(b), content, blocks, g)
    first = torch.where(read_all, block_of, blocks).amin(1)[:, None]
    assert torch.equal(read_all, content & (block_of == first))
    assert torch.equal(full, content & (block_of >= first))
    drawn = torch.bincount(first[:, 0], minlength=blocks).float() / b  # blocks drawn evenly
    assert float((drawn - 1 / blocks).abs().max()) < 0.03
    _, half = block_step_masks(torch.full((b,), 0.5), content, blocks, g)
    rate = half.sum() / (content.sum() / blocks)
    assert float(rate) == pytest.approx(0.5, abs=0.02)


def test_block_share_masks_that_share_and_keeps_other_runs_unchanged():
    g = torch.Generator().manual_seed(4)
    tokens, valid = _batch()
    tokens[:, 10:] = 98  # EOS from position 10
    cfg = ScheduleConfig(high_mask_share=0.5, block_share=0.25, blocks=4)
    c = MaskSchedule(cfg, eos_id=98).corrupt(tokens, valid, MASK, 0, g)
    assert not (c.block & c.high).any()
    assert float(c.block.float().mean()) == pytest.approx(0.25, abs=0.01)
    assert float(c.high.float().mean()) == pytest.approx(0.5, abs=0.01)
    assert not c.masked[c.block][:, 11:].any()  # EOS padding after the first is given
    has = c.weights[c.block].sum(1) > 0
    torch.testing.assert_close(c.weights[c.block].sum(1)[has], torch.ones(int(has.sum())))
    # without block_share the same seed draws the same masks as before the option existed
    plain = ScheduleConfig(high_mask_share=0.5)
    a = MaskSchedule(plain).corrupt(tokens, valid, MASK, 0, torch.Generator().manual_seed(5))
    again = MaskSchedule(plain, eos_id=98).corrupt(
        tokens, valid, MASK, 0, torch.Generator().manual_seed(5)
    )
    assert torch.equal(a.masked, again.masked) and not a.block.any()
    with pytest.raises(ValueError, match="high_mask_share \\+ block_share <= 1"):
        MaskSchedule(ScheduleConfig(high_mask_share=0.8, block_share=0.5), eos_id=98)
    with pytest.raises(ValueError, match="EOS id"):
        MaskSchedule(ScheduleConfig(block_share=0.5))
