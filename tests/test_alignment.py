import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from whisfusion.alignment import (
    aligned_token_embedding,
    alignment_bias,
    best_path_token_start,
    ctc_loss,
    ctc_targets,
    expected_embedding,
    expected_positions,
    greedy_ctc,
    new_token_probability,
    penalize_blank,
    squared_distance,
)
from whisfusion.config import DecoderConfig
from whisfusion.decoder import DiffusionDecoder
from whisfusion.decoders import diffusion_decoder
from whisfusion.prior import HeadReading

BLANK = 3  # labels 0, 1, 2 and the blank


def _one_hot_log_probs(path: list[int], classes: int = 4, sharp: float = 30.0) -> torch.Tensor:
    """(1, S, classes) log-probabilities peaked on `path`."""
    return F.log_softmax(sharp * F.one_hot(torch.tensor([path]), classes).float(), dim=-1)


def test_expected_positions_count_collapsed_tokens():
    path = [BLANK, 0, 0, BLANK, 1, 1, 0, BLANK, 2, 2]
    valid = torch.ones(1, len(path), dtype=torch.bool)
    pos = expected_positions(new_token_probability(_one_hot_log_probs(path), valid, BLANK))
    # a token counts once where it starts; a repeat counts only after a blank or another label
    torch.testing.assert_close(
        pos[0], torch.tensor([0, 1, 1, 1, 2, 2, 3, 3, 4, 4.0]), atol=1e-3, rtol=0
    )


def test_new_token_probability_is_exact_for_independent_frames():
    torch.manual_seed(0)
    log_probs = F.log_softmax(torch.randn(1, 4, 4), dim=-1)
    probs = log_probs.exp()[0]
    expected = torch.zeros(4)
    # enumerate every label path: each frame independent, as the formula assumes
    for path in itertools.product(range(4), repeat=4):
        p = torch.prod(torch.stack([probs[j, c] for j, c in enumerate(path)]))
        for j, c in enumerate(path):
            if c != BLANK and (j == 0 or path[j - 1] != c):
                expected[j] += p
    got = new_token_probability(log_probs, torch.ones(1, 4, dtype=torch.bool), BLANK)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_invalid_frames_start_no_token():
    path = [0, BLANK, 1, 2, 0]
    valid = torch.tensor([[True, True, True, False, False]])
    pos = expected_positions(new_token_probability(_one_hot_log_probs(path), valid, BLANK))
    assert pos[0, 2:].tolist() == pytest.approx([2.0, 2.0, 2.0], abs=1e-3)


def test_best_path_positions_are_whole_and_follow_the_greedy_reading():
    torch.manual_seed(0)
    # soft posteriors: the expected counts drift between whole numbers, the best path's do not
    log_probs = F.log_softmax(1.5 * torch.randn(2, 30, 4), dim=-1)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, 21:] = False
    start = best_path_token_start(log_probs, valid, BLANK)
    pos = expected_positions(start)
    assert set(start.unique().tolist()) <= {0.0, 1.0}
    assert (start[1, 21:] == 0).all()  # invalid frames start nothing
    soft = expected_positions(new_token_probability(log_probs, valid, BLANK))
    assert not torch.allclose(soft, soft.round(), atol=0.05)
    best = log_probs.argmax(dim=-1)
    for n, length in enumerate(valid.sum(dim=1).tolist()):
        path = best[n, :length].tolist()  # the best path, collapsed by hand
        heard = [t for j, t in enumerate(path) if t != BLANK and (j == 0 or t != path[j - 1])]
        assert greedy_ctc(log_probs, valid, BLANK)[n] == heard
        assert int(pos[n, -1]) == len(heard)
        # the frame where the count first reaches i carries the i-th token read
        firsts = [int((pos[n] >= i).nonzero()[0]) for i in range(1, len(heard) + 1)]
        assert best[n, firsts].tolist() == heard
    # on sure posteriors the two agree
    path = [BLANK, 0, 0, BLANK, 1, 1, 0, BLANK, 2, 2]
    sure, ones = _one_hot_log_probs(path), torch.ones(1, len(path), dtype=torch.bool)
    torch.testing.assert_close(
        best_path_token_start(sure, ones, BLANK),
        new_token_probability(sure, ones, BLANK),
        atol=1e-3,
        rtol=0,
    )


def test_alignment_bias_peaks_where_positions_meet():
    key_pos = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    bias = alignment_bias(squared_distance(torch.arange(3), key_pos), torch.tensor([1.0, 0.0]))
    assert bias.shape == (1, 2, 3, 4)
    for i in range(3):
        assert int(bias[0, 0, i].argmax()) == i  # query i prefers the frame at position i
        assert bias[0, 0, i, i] == 0.0 and (bias[0, 0, i] <= 0).all()
    assert bias[0, 0, 0, 3] < bias[0, 0, 0, 2] < bias[0, 0, 0, 1]
    assert (bias[0, 1] == 0).all()  # a head of sharpness 0 has no prior


def test_ctc_loss_is_the_per_token_mean_and_stays_finite():
    torch.manual_seed(0)
    log_probs = F.log_softmax(torch.randn(2, 6, 4), dim=-1)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    targets = [[0, 1, 2], [2]]
    ref = F.ctc_loss(
        log_probs.transpose(0, 1),
        torch.tensor([0, 1, 2, 2]),
        torch.tensor([6, 4]),
        torch.tensor([3, 1]),
        blank=BLANK,
        reduction="sum",
    )
    torch.testing.assert_close(ctc_loss(log_probs, valid, targets, BLANK), ref / 4)
    # more labels than frames can emit: no alignment exists, the row adds nothing
    too_long = ctc_loss(log_probs, valid, [[0, 1, 0, 1, 0, 1, 0], [2]], BLANK)
    assert torch.isfinite(too_long)


def test_greedy_ctc_collapses_repeats_and_blanks():
    path = [0, 0, BLANK, 0, 1, 1, BLANK, 2]
    valid = torch.tensor([[True] * 7 + [False]])
    assert greedy_ctc(_one_hot_log_probs(path), valid, BLANK) == [[0, 0, 1]]


def test_blank_penalty_lowers_the_blank_and_keeps_the_other_labels_ratios():
    log_probs = torch.randn(2, 6, 4).log_softmax(-1)
    assert penalize_blank(log_probs, 0.0, BLANK) is log_probs
    out = penalize_blank(log_probs, 1.5, BLANK)
    assert torch.allclose(out.logsumexp(-1), torch.zeros(2, 6), atol=1e-6)
    assert (out[..., BLANK] < log_probs[..., BLANK]).all()
    ratios = out[..., :BLANK] - out[..., :1]
    assert torch.allclose(ratios, log_probs[..., :BLANK] - log_probs[..., :1], atol=1e-5)
    # blank at 0.5 against a label at 0.3: the greedy reading drops the label until penalized
    frame = torch.tensor([[[0.3, 0.1, 0.1, 0.5]]]).log()
    valid = torch.ones(1, 1, dtype=torch.bool)
    assert greedy_ctc(frame, valid, BLANK) == [[]]
    assert greedy_ctc(penalize_blank(frame, 1.0, BLANK), valid, BLANK) == [[0]]


def test_decoding_reads_more_tokens_under_a_blank_penalty():
    torch.manual_seed(0)
    cfg = DecoderConfig(layers=1, width=32, heads=4, align_hidden=16, align_best_path=True)
    decoder = _build(cfg).eval()
    feats, valid, _ = _inputs()
    with torch.no_grad():
        decoder.prior.head.proj[-1].bias[decoder.prior.blank] += 3.0  # a peaky head: blank wins
        heard = [
            int(
                decoder.cross_cache(
                    feats, valid, HeadReading(blank_penalty=p)
                ).prior.token_start.sum()
            )
            for p in (0.0, 2.0, 8.0)
        ]
        plain = decoder.cross_cache(feats, valid).prior.log_probs
    assert heard[0] < heard[1] < heard[2]
    assert torch.equal(decoder.prior.head(feats, valid), plain)  # training reads the head unchanged


def test_ctc_targets_drop_language_and_padding():
    eos = 1
    tokens = torch.tensor([[5, 9, 8, eos, eos], [6, 7, eos, eos, 4]])
    valid = torch.tensor([[True] * 5, [True, True, True, True, False]])
    assert ctc_targets(tokens, valid, eos) == [[9, 8], [7]]


V, E = 40, 24


def _build(cfg: DecoderConfig) -> DiffusionDecoder:
    """The diffusion decoder of `cfg` (with its alignment prior) over V tokens, E-wide frames."""
    return diffusion_decoder(cfg, V, E)


def _decoder(align_hidden: int, token_memory: bool = False, context: int = 0) -> DiffusionDecoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(
        layers=2,
        width=32,
        heads=4,
        align_hidden=align_hidden,
        align_context=context,
        align_token_memory=token_memory,
    )
    return _build(cfg).eval()


def _inputs():
    feats = torch.randn(2, 18, E)
    valid = torch.ones(2, 18, dtype=torch.bool)
    valid[1, 12:] = False
    return feats, valid, torch.randint(0, V + 1, (2, 10))


def test_prior_reaches_the_logits_and_vanishes_at_zero_sharpness():
    with_prior, without = _decoder(16), _decoder(0)
    missing = without.load_state_dict(with_prior.state_dict(), strict=False)
    assert not missing.missing_keys  # the prior adds parameters, it changes none
    feats, valid, tokens = _inputs()
    cache = with_prior.cross_cache(feats, valid)
    assert cache.prior.key_pos.shape == (2, 18) and cache.prior.log_probs.shape == (2, 18, V + 1)
    ref = with_prior(tokens, cache)
    cache.prior.key_pos = (
        cache.prior.key_pos + 3.0
    )  # the frames move: the prior moves the attention
    assert not torch.allclose(with_prior(tokens, cache), ref)
    with torch.no_grad():
        for sharpness in with_prior.prior.sharpness:
            sharpness.fill_(-30.0)  # softplus ~ 1e-13: no prior
    torch.testing.assert_close(
        with_prior(tokens, with_prior.cross_cache(feats, valid)),
        without(tokens, without.cross_cache(feats, valid)),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("context", [0, 5])
def test_prior_keeps_k_rows_exact_and_ignores_padding_frames(context):
    dec = _decoder(16, context=context)
    feats, valid, tokens = _inputs()
    cache = dec.cross_cache(feats, valid)
    single = dec(tokens, cache)
    grouped = dec(tokens.repeat_interleave(3, 0), cache).view(2, 3, 10, V)
    for j in range(3):
        torch.testing.assert_close(grouped[:, j], single, atol=1e-5, rtol=1e-5)
    noisy = feats.clone()
    noisy[1, 12:] = 1e3
    torch.testing.assert_close(dec(tokens, dec.cross_cache(noisy, valid)), single)


@pytest.mark.parametrize("context", [0, 3, 5])
def test_head_context_reaches_exactly_its_neighbours_and_never_the_padding(context):
    head = _decoder(16, context=context).prior.head
    feats, valid, _ = _inputs()
    ref = head(feats, valid)
    moved = feats.clone()
    moved[0, 8] += 1.0
    changed = (head(moved, valid) - ref).abs().amax(dim=-1)[0] > 0  # (S,) frames of utterance 0
    reach = context // 2
    assert changed.nonzero().flatten().tolist() == list(range(8 - reach, 8 + reach + 1))
    noisy = feats.clone()
    noisy[1, 12:] = 1e3  # utterance 1's padding, right after its last valid frame (11)
    torch.testing.assert_close(head(noisy, valid)[1, :12], ref[1, :12])


def test_head_context_is_an_odd_width_and_needs_the_head():
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="align_context must be 0 or an odd"):
            _decoder(16, context=bad)
    with pytest.raises(ValueError, match="align_context.*align_hidden"):
        _decoder(0, context=3)


def test_only_the_ctc_loss_trains_the_alignment_head():
    dec = _decoder(16).train()
    feats, valid, tokens = _inputs()
    dec(tokens, dec.cross_cache(feats, valid)).square().mean().backward()
    assert all(p.grad is None for p in dec.prior.head.parameters())  # positions are detached
    assert all(sharpness.grad is not None for sharpness in dec.prior.sharpness)
    cache = dec.cross_cache(feats, valid)
    ctc_loss(cache.prior.log_probs, valid, [[3, 4], [5]], dec.prior.blank).backward()
    assert all(p.grad is not None for p in dec.prior.head.parameters())


def test_expected_embedding_weighs_the_table_by_the_posteriors_and_drops_blank():
    table = torch.randn(3, 5)
    sure = _one_hot_log_probs([1, BLANK, 2])  # labels 0..2, blank 3
    torch.testing.assert_close(
        expected_embedding(sure, table)[0],
        torch.stack([table[1], torch.zeros(5), table[2]]),
        atol=1e-4,
        rtol=0,
    )
    half = torch.tensor([[[0.5, 0.0, 0.0, 0.5]]]).log()
    torch.testing.assert_close(expected_embedding(half, table)[0, 0], 0.5 * table[0])


def test_token_memory_lets_cross_attention_read_the_heads_posteriors():
    dec = _decoder(16, token_memory=True).train()
    feats, valid, tokens = _inputs()
    ref = dec.eval()(tokens, dec.cross_cache(feats, valid))
    with torch.no_grad():  # another reading of the same frames: other keys and values
        dec.prior.head.proj[-1].bias[:V].normal_(0.0, 5.0)
    assert not torch.allclose(dec(tokens, dec.cross_cache(feats, valid)), ref, atol=1e-3)
    dec.train()
    dec(tokens, dec.cross_cache(feats, valid)).square().mean().backward()
    assert all(p.grad is None for p in dec.prior.head.parameters())  # still only CTC trains it
    assert all(layer.weight.grad is not None for layer in dec.prior.kv_token)
    with pytest.raises(ValueError, match="align_token_memory.*align_hidden"):
        _decoder(0, token_memory=True)
    with pytest.raises(ValueError, match="align_best_path.*align_hidden"):
        _build(DecoderConfig(align_best_path=True))
    best_path = DecoderConfig(layers=1, width=32, heads=4, align_hidden=16, align_best_path=True)
    cache = _build(best_path).cross_cache(*_inputs()[:2])
    key_pos = cache.prior.key_pos
    assert key_pos[0, -1] > 0 and torch.equal(key_pos, key_pos.round())


def test_aligned_token_embedding_puts_the_ith_heard_token_at_position_i():
    table = torch.randn(3, 6)
    path = [BLANK, 2, 2, BLANK, 0, BLANK, BLANK, 1, BLANK]  # heard: 2 0 1
    valid = torch.ones(1, len(path), dtype=torch.bool)
    lp = _one_hot_log_probs(path)
    frames = expected_embedding(lp, table)

    def aligned(width: float) -> torch.Tensor:
        start = new_token_probability(lp, valid, BLANK)
        return aligned_token_embedding(start, expected_positions(start), frames, 6, width)

    heard = aligned(0.25)
    assert heard.shape == (1, 6, 6)
    expected = torch.stack([torch.zeros(6), table[2], table[0], table[1], *[torch.zeros(6)] * 2])
    torch.testing.assert_close(heard[0], expected, atol=3e-3, rtol=0)
    # frames outside `valid` start nothing
    valid[0, 4:] = False
    cut = aligned(0.25)
    torch.testing.assert_close(cut[0, 2:], torch.zeros(4, 6), atol=1e-3, rtol=0)
    # a wider kernel lets a token reach its neighbours, exp(-1 / 2 width^2) of it
    wide = aligned(0.5)
    torch.testing.assert_close(wide[0, 2], table[2] * math.exp(-2.0), atol=1e-3, rtol=0)


def test_logit_fusion_adds_the_heads_reading_of_each_position():
    torch.manual_seed(0)
    cfg = DecoderConfig(layers=1, width=32, heads=4, align_hidden=16, align_best_path=True)
    plain = _build(cfg).eval()
    fused = _build(dataclasses.replace(cfg, align_logit_weight=0.5)).eval()
    fused.load_state_dict(plain.state_dict())  # the fusion adds no parameter
    feats, valid, _ = _inputs()
    canvas = torch.full((2, 30), V)
    cache, fused_cache = plain.cross_cache(feats, valid), fused.cross_cache(feats, valid)
    delta = fused(canvas.repeat_interleave(2, 0), fused_cache) - plain(
        canvas, cache
    ).repeat_interleave(2, 0)
    log_probs, pos = cache.prior.log_probs, cache.prior.key_pos
    for n in range(2):
        heard = int(pos[n, -1])
        assert 0 < heard < 29
        for i in range(1, heard + 1):
            frame = int((pos[n] >= i).nonzero()[0])  # where the i-th token read starts
            for row in (2 * n, 2 * n + 1):  # every candidate row of the utterance
                # neighbours add exp(-8) of theirs
                torch.testing.assert_close(
                    delta[row, i], 0.5 * log_probs[n, frame, :V], atol=1e-2, rtol=0
                )
        # the padding is the decoder's, and so is the language position (but for exp(-8) of
        # the first or last token's next door)
        assert delta[2 * n, heard + 2 :].abs().max() < 1e-5
        assert delta[2 * n, [0, heard + 1]].abs().max() < 1e-2

    # decoding can weigh the head otherwise than training did
    def weighted(weight: float) -> torch.Tensor:
        return fused(canvas, fused.cross_cache(feats, valid, HeadReading(logit_weight=weight)))

    torch.testing.assert_close(weighted(0.0), plain(canvas, cache))
    heavier = weighted(1.5) - plain(canvas, cache)
    torch.testing.assert_close(heavier, 3 * delta[::2], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="align_logit_weight.*align_best_path"):
        _build(dataclasses.replace(cfg, align_best_path=False, align_logit_weight=1.0))


def test_token_input_reaches_an_all_mask_canvas():
    dec = _decoder(16, token_memory=False)
    feats, valid, _ = _inputs()
    canvas = torch.full((2, 10), V)  # all [MASK]
    ref = dec(canvas, dec.cross_cache(feats, valid))
    assert dec.cross_cache(feats, valid).prior.token_memory is None
    dec.cfg.align_token_input = True
    with_input = dec(canvas, dec.cross_cache(feats, valid))
    assert not torch.allclose(with_input, ref, atol=1e-4)
    grouped = dec(canvas.repeat_interleave(3, 0), dec.cross_cache(feats, valid))
    torch.testing.assert_close(grouped.view(2, 3, 10, V)[:, 1], with_input, atol=1e-5, rtol=1e-5)
