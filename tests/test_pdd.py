import pytest
import torch

from whisfusion.config import DecodeConfig
from whisfusion.pdd import canvas_for, options_from_config, pdd_decode
from whisfusion.pdd.sampler import block_budgets, eos_tail, gumbel_argmax, predict

V = 24  # head size; [MASK] = V
MASK, EOS = V, 1
LENGTHS = [8, 5, 12]
LANGS = [2, None, 3]  # utterance 1 predicts its language


def targets() -> torch.Tensor:
    """(N, L_max) transcripts the fake denoisers believe in: [lang] text EOS.., EOS padding."""
    gen = torch.Generator().manual_seed(7)
    out = torch.full((len(LENGTHS), max(LENGTHS)), EOS)
    for n, length in enumerate(LENGTHS):
        words = length - 3
        out[n, 0] = LANGS[n] if LANGS[n] is not None else 4
        out[n, 1 : 1 + words] = torch.randint(5, V, (words,), generator=gen)
    return out


class Peaked:
    """Logits peaked on fixed target canvases, whatever the input; records every call."""

    def __init__(self, target: torch.Tensor, k: int, margin: float = 60.0):
        self.logits = torch.nn.functional.one_hot(target, V).float() * margin
        self.k = k
        self.inputs: list[torch.Tensor] = []

    def __call__(self, tokens, cache, where):
        assert cache == "cache"  # passed through untouched
        self.inputs.append(tokens.clone())
        return self.logits.repeat_interleave(self.k, dim=0)[:, : tokens.shape[1]][where]


class Noisy:
    """Random but fixed logits per row position: a flat, undecided model."""

    def __init__(self, n: int, length: int, k: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.logits = torch.randn(n, length, V, generator=gen).repeat_interleave(k, dim=0)

    def __call__(self, tokens, cache, where):
        return self.logits[:, : tokens.shape[1]][where]


def decode(denoise, k=3, steps=4, remasking="low_confidence", temperature=1.0, seed=0, **kw):
    canvas, valid = canvas_for(LENGTHS, MASK, EOS, LANGS)
    opts = dict(
        mask_id=MASK,
        eos_id=EOS,
        candidates=k,
        steps=steps,
        remasking=remasking,
        random_schedule=[1.0, 0.9, 0.85, 0.8],
        temperature=temperature,
        generator=torch.Generator().manual_seed(seed),
    )
    opts.update(kw)
    return pdd_decode(denoise, "cache", canvas, valid, **opts), canvas, valid


def test_canvas_for_padded_batch():
    canvas, valid = canvas_for(LENGTHS, MASK, EOS, LANGS)
    assert canvas.shape == valid.shape == (3, 12)
    assert valid.sum(1).tolist() == LENGTHS
    assert canvas[0, 0] == 2 and canvas[1, 0] == MASK and canvas[2, 0] == 3
    assert bool((canvas[~valid] == EOS).all()) and bool((canvas[valid][1:] != EOS).all())
    with pytest.raises(ValueError, match="utterance 1"):
        canvas_for([4, 0], MASK, EOS)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_certain_model_gives_its_transcript_in_every_row(remasking):
    target = targets()
    res, _, valid = decode(Peaked(target, 3), remasking=remasking)
    assert res.tokens.shape == res.confidence.shape == (3, 3, 12)
    for k in range(3):
        assert torch.equal(res.tokens[:, k], target)
    assert torch.allclose(res.confidence[valid[:, None].expand_as(res.confidence)], torch.ones(1))


def test_denoise_sees_eos_beyond_each_canvas_and_given_languages():
    den = Peaked(targets(), 2)
    _, canvas, valid = decode(den, k=2, remasking="random")
    for x in den.inputs:
        assert bool((x[~valid.repeat_interleave(2, 0)] == EOS).all())
        assert torch.equal(x[::2, 0][[0, 2]], canvas[[0, 2], 0])


def test_low_confidence_commits_the_linear_budget_and_never_revisits():
    k, steps = 3, 4
    res, canvas, valid = decode(Noisy(3, 12, k), k=k, steps=steps, return_trajectory=True)
    free = (valid & (canvas == MASK)).repeat_interleave(k, 0)
    budgets = block_budgets(free, steps, 1)[0]
    assert budgets.sum(1).tolist() == free.sum(1).tolist()
    prev = canvas.repeat_interleave(k, 0)
    assert res.steps_run == steps and len(res.trajectory) == steps
    for s, step in enumerate(res.trajectory):
        cur = step.reshape(-1, 12)
        changed = cur != prev
        assert changed.sum(1).tolist() == budgets[:, s].tolist()
        assert bool((prev[changed] == MASK).all())  # only masked positions get filled
        assert bool((cur[~free] == prev[~free]).all())  # given and invalid positions stay
        prev = cur
    assert not bool((res.tokens == MASK).any())
    assert bool((res.tokens[~valid[:, None].expand_as(res.tokens)] == EOS).all())


def test_one_block_is_llada_even_split():
    free = torch.zeros(3, 12, dtype=torch.bool)
    free[0, :11] = True
    free[1, 2:7] = True  # 5 positions over 4 steps
    budgets = block_budgets(free, 4, 1)[0]
    assert budgets.tolist() == [[3, 3, 3, 2], [2, 1, 1, 1], [0, 0, 0, 0]]


def test_block_budgets_fill_each_block_during_its_own_steps():
    free = torch.ones(2, 10, dtype=torch.bool)
    free[1, 7:] = False  # 7 free positions
    budgets, block = block_budgets(free, steps=5, blocks=2)
    # steps 0-2 fill block 0, steps 3-4 block 1; row 0: blocks of 5 + 5, row 1: 3 + 4
    assert block[0].tolist() == [0] * 5 + [1] * 5
    assert block[1].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert budgets.tolist() == [[2, 2, 1, 3, 2], [2, 1, 1, 2, 1]]
    with pytest.raises(ValueError, match="blocks"):
        block_budgets(free, steps=2, blocks=3)


def test_blocks_decode_left_to_right():
    k, steps, blocks = 2, 6, 3
    res, canvas, valid = decode(
        Noisy(3, 12, k), k=k, steps=steps, blocks=blocks, return_trajectory=True
    )
    free = (valid & (canvas == MASK)).repeat_interleave(k, 0)
    _, block = block_budgets(free, steps, blocks)
    for s, step in enumerate(res.trajectory):
        filled = free & (step.reshape(-1, 12) != MASK)
        done = s * blocks // steps  # the block this step fills
        if (s + 1) * blocks // steps > done:  # its last step: blocks <= done are complete
            assert torch.equal(filled, free & (block <= done))
        assert not bool((filled & (block > done)).any())
    assert not bool((res.tokens == MASK).any())
    with pytest.raises(ValueError, match="low_confidence"):
        decode(Noisy(3, 12, k), k=k, steps=steps, blocks=2, remasking="random")


def test_denoiser_is_asked_for_the_positions_each_step_may_commit():
    k, steps, blocks = 2, 6, 3
    asked = []

    class Recording(Noisy):
        def __call__(self, tokens, cache, where):
            asked.append((tokens.clone(), where.clone()))
            return super().__call__(tokens, cache, where)

    res, canvas, valid = decode(Recording(3, 12, k), k=k, steps=steps, blocks=blocks)
    free = (valid & (canvas == MASK)).repeat_interleave(k, 0)
    _, block = block_budgets(free, steps, blocks)
    for s, (tokens, where) in enumerate(asked):
        assert torch.equal(where, (tokens == MASK) & (block == s * blocks // steps))
    asked.clear()
    decode(Recording(3, 12, k), k=k, steps=steps, remasking="random")
    assert all(torch.equal(where, tokens == MASK) for tokens, where in asked)


def test_eos_tail_is_the_sure_eos_suffix_of_the_free_positions():
    e = EOS
    pred = torch.tensor([[7, e, 7, e, e, e], [7, 8, e, e, e, e], [e, e, e, e, e, e]])
    prob = torch.tensor([[0.9] * 6, [0.9, 0.9, 0.5, 0.95, 0.95, 0.95], [0.99] * 6])
    free = torch.ones(3, 6, dtype=torch.bool)
    free[2, 0] = False  # a given language token
    tail = eos_tail(pred, prob, free, EOS, threshold=0.8)
    assert tail.tolist() == [
        [False, False, False, True, True, True],  # the EOS at 1 is not part of the suffix
        [False, False, False, True, True, True],  # the unsure EOS at 2 ends it
        [False, True, True, True, True, True],
    ]


def test_length_first_gives_every_step_to_the_transcript():
    k, steps = 1, 4
    target = targets()
    res, canvas, valid = decode(
        Peaked(target, k), k=k, steps=steps, eos_threshold=0.9, return_trajectory=True
    )
    assert torch.equal(res.tokens[:, 0], target)
    free = valid & (canvas == MASK)
    tail = free & (target == EOS)
    first = res.trajectory[0][:, 0]
    assert bool((first[tail] == EOS).all())  # the whole padding at step 1
    words = free & ~tail
    # the T steps share the remaining positions evenly: step 1 fills its share of them only
    assert ((first != MASK) & words).sum(1).tolist() == block_budgets(words, steps, 1)[0][
        :, 0
    ].tolist()
    with pytest.raises(ValueError, match="eos_threshold"):
        decode(Peaked(target, k), k=k, eos_threshold=0.5, remasking="random")


def test_tail_margin_cuts_the_canvas_after_the_length_step():
    k, steps, margin = 2, 4, 1
    target = targets()
    full, _, _ = decode(Peaked(target, k), k=k, steps=steps, eos_threshold=0.9)
    den = Peaked(target, k)
    res, canvas, valid = decode(
        den, k=k, steps=steps, eos_threshold=0.9, tail_margin=margin, return_trajectory=True
    )
    # the same transcripts and confidences, returned at the full width
    assert torch.equal(res.tokens, full.tokens)
    assert torch.equal(res.confidence, full.confidence)
    assert all(t.shape == res.tokens.shape for t in res.trajectory)
    text_end = int(((target != EOS).long() * torch.arange(1, target.shape[1] + 1)).max())
    widths = [t.shape[1] for t in den.inputs]
    assert widths[0] == canvas.shape[1]  # the length step reads the whole canvas
    assert set(widths[1:]) == {text_end + margin}
    assert text_end + margin < canvas.shape[1]


def test_commit_threshold_commits_every_sure_position_at_once():
    k, steps = 2, 4
    target = targets()
    sure, _, _ = decode(Peaked(target, k), k=k, steps=steps, commit_threshold=0.9)
    assert sure.steps_run == 1
    assert torch.equal(sure.tokens[:, 0], target)
    paced, _, _ = decode(Peaked(target, k), k=k, steps=steps)
    assert paced.steps_run == steps
    # a flat model is never that sure: the schedule's budgets alone, the same result
    flat, _, _ = decode(Noisy(3, 12, k), k=k, steps=steps, temperature=0.0, commit_threshold=0.9)
    plain, _, _ = decode(Noisy(3, 12, k), k=k, steps=steps, temperature=0.0)
    assert flat.steps_run == steps
    assert torch.equal(flat.tokens, plain.tokens)
    with pytest.raises(ValueError, match="commit_threshold"):
        decode(Peaked(target, k), k=k, commit_threshold=0.9, remasking="random")
    with pytest.raises(ValueError, match="commit_threshold"):
        decode(Peaked(target, k), k=k, commit_threshold=1.5)


def test_random_masks_the_scheduled_share_and_leaves_no_mask():
    k, steps, schedule = 2, 5, [1.0, 0.5, 0.25]
    den = Noisy(3, 12, k)
    calls = []

    def recording(tokens, cache, where):
        calls.append(tokens.clone())
        return den(tokens, cache, where)

    res, canvas, valid = decode(
        recording,
        k=k,
        steps=steps,
        remasking="random",
        random_schedule=schedule,
        return_trajectory=True,
    )
    free = (valid & (canvas == MASK)).repeat_interleave(k, 0)
    n_free = free.sum(1)
    for s, x in enumerate(calls):
        rho = schedule[min(s, len(schedule) - 1)]
        assert (x == MASK).sum(1).tolist() == torch.floor(rho * n_free + 0.5).long().tolist()
        assert bool((x[~free] == canvas.repeat_interleave(k, 0)[~free]).all())
    for step in res.trajectory:
        assert not bool((step == MASK).any())


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_candidates_differ_when_sampling_and_follow_the_seed(remasking):
    den = Noisy(3, 12, 4)
    a, _, _ = decode(den, k=4, remasking=remasking, seed=1)
    b, _, _ = decode(den, k=4, remasking=remasking, seed=1)
    c, _, _ = decode(den, k=4, remasking=remasking, seed=2)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.confidence, b.confidence)
    assert not torch.equal(a.tokens[:, 1:], c.tokens[:, 1:])
    for n in range(3):
        assert len({tuple(row.tolist()) for row in a.tokens[n]}) > 1


def test_temperature_zero_collapses_low_confidence_candidates():
    den = Noisy(3, 12, 4)
    res, _, _ = decode(den, k=4, temperature=0.0, seed=3)
    for k in range(1, 4):
        assert torch.equal(res.tokens[:, k], res.tokens[:, 0])
    other, _, _ = decode(den, k=4, temperature=1.0, seed=4)
    assert torch.equal(other.tokens[:, 0], res.tokens[:, 0])  # row 0 is always greedy


def test_early_exit():
    target = targets()
    res, _, _ = decode(Peaked(target, 2), k=2, steps=4, remasking="random")
    assert res.steps_run == 2  # step 2 reproduced step 1
    res, _, _ = decode(Peaked(target, 2), k=2, steps=4, remasking="low_confidence")
    assert res.steps_run == 4  # 4+ masked positions per row need all 4 steps
    # canvases shorter than T: every position committed after 3 steps
    short = torch.tensor([[2, 9, EOS], [3, EOS, EOS]])
    den = Peaked(short, 1)
    canvas, valid = canvas_for([3, 2], MASK, EOS)
    res = pdd_decode(
        den,
        "cache",
        canvas,
        valid,
        mask_id=MASK,
        eos_id=EOS,
        candidates=1,
        steps=8,
        remasking="low_confidence",
        random_schedule=[1.0],
        temperature=1.0,
    )
    assert res.steps_run == 3 and torch.equal(res.tokens[:, 0], short)


def test_predict_reads_only_where_asked_and_draws_the_same_samples():
    logits = torch.randn(4, 6, V, generator=torch.Generator().manual_seed(3))
    sampled = torch.tensor([False, True, False, True])
    where = torch.rand(4, 6, generator=torch.Generator().manual_seed(4)) < 0.5
    everywhere = torch.ones(4, 6, dtype=torch.bool)
    full = predict(logits[everywhere], sampled, 1.0, torch.Generator().manual_seed(5), everywhere)
    part = predict(logits[where], sampled, 1.0, torch.Generator().manual_seed(5), where)
    for whole, some in zip(full, part, strict=True):
        assert torch.equal(some[where], whole[where])
        assert not some[~where].any()
    assert torch.equal(full[0][~sampled], logits[~sampled].argmax(-1))


def test_gumbel_argmax_samples_the_tempered_softmax():
    logits = torch.tensor([0.0, 1.0986123]).expand(4000, 2)  # probabilities 1/4, 3/4
    where = torch.ones(4000, 1, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    share = gumbel_argmax(logits, where, 1.0, gen).float().mean().item()
    assert abs(share - 0.75) < 0.03
    share_cold = gumbel_argmax(logits, where, 0.5, gen).float().mean().item()  # softmax(2x): 9/10
    assert abs(share_cold - 0.9) < 0.03


def test_config_options_and_bad_input():
    canvas, valid = canvas_for([6], MASK, EOS)
    den = Peaked(torch.tensor([[2, 7, 8, 9, EOS, EOS]]), DecodeConfig().candidates)
    res = pdd_decode(
        den, "cache", canvas, valid, mask_id=MASK, eos_id=EOS, **options_from_config(DecodeConfig())
    )
    assert res.tokens.shape == (1, DecodeConfig().candidates, 6)
    with pytest.raises(ValueError, match="remasking"):
        decode(Peaked(targets(), 3), remasking="sometimes")
    with pytest.raises(ValueError, match="random_schedule"):
        decode(Peaked(targets(), 3), remasking="random", random_schedule=[1.5])
    with pytest.raises(ValueError, match="denoise returned"):
        decode(lambda x, c, w: torch.zeros(int(w.sum()), V + 1))
    with pytest.raises(ValueError, match="denoise returned"):  # every position, not `where`'s
        decode(lambda x, c, w: torch.zeros(x.shape[0], x.shape[1], V))
