import pytest
import torch

from whisfusion.config import DecoderConfig
from whisfusion.decoder import DiffusionDecoder, apply_rope, rope_tables, stack_frames
from whisfusion.decoders import diffusion_decoder
from whisfusion.kv_reuse import ReusedKeys

V, E = 50, 32


@pytest.fixture(params=[1, 2], ids=["frames", "stacked-frames"])
def dec(request):
    # stacked: frames 14 and 15 of the second utterance (_inputs) share a frame, valid and not
    torch.manual_seed(0)
    cfg = DecoderConfig(layers=2, width=64, heads=4, frame_stack=request.param)
    return DiffusionDecoder(cfg, V, E).eval()


def _inputs(n=2, s=20, length=12):
    feats = torch.randn(n, s, E)
    valid = torch.ones(n, s, dtype=torch.bool)
    valid[1, 15:] = False
    tokens = torch.randint(0, V + 1, (n, length))
    return feats, valid, tokens


def test_shapes_and_mask_never_predicted(dec):
    feats, valid, tokens = _inputs()
    logits = dec(tokens, dec.cross_cache(feats, valid))
    assert logits.shape == (2, 12, V)  # vocab_size classes: [MASK] (id V) has no output
    assert dec.embed.num_embeddings == V + 1 and dec.mask_id == V


def test_k_rows_share_the_cache_exactly(dec):
    feats, valid, tokens = _inputs()
    cache = dec.cross_cache(feats, valid)
    single = dec(tokens, cache)
    k = 3
    grouped = dec(tokens.repeat_interleave(k, 0), cache).view(2, k, 12, V)
    for j in range(k):
        torch.testing.assert_close(grouped[:, j], single, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="do not group"):
        dec(tokens[:1].repeat(3, 1), cache)


def test_padding_frames_and_positions_are_ignored(dec):
    feats, valid, tokens = _inputs()
    ref = dec(tokens, dec.cross_cache(feats, valid))
    noisy = feats.clone()
    noisy[1, 15:] = 1e3  # invalid encoder frames: must not matter
    torch.testing.assert_close(dec(tokens, dec.cross_cache(noisy, valid)), ref)
    # A canvas padded with extra positions gives the same logits on its own positions.
    padded = torch.cat([tokens, torch.full((2, 4), 1)], dim=1)
    canvas_valid = torch.ones_like(padded, dtype=torch.bool)
    canvas_valid[:, 12:] = False
    out = dec(padded, dec.cross_cache(feats, valid), canvas_valid)
    torch.testing.assert_close(out[:, :12], ref, atol=1e-5, rtol=1e-5)


def test_bidirectional_and_audio_conditioned(dec):
    feats, valid, tokens = _inputs()
    cache = dec.cross_cache(feats, valid)
    ref = dec(tokens, cache)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % V
    # a change at the last position reaches the first one: attention is not causal
    assert not torch.allclose(dec(changed, cache)[:, 0], ref[:, 0])
    assert not torch.allclose(dec(tokens, dec.cross_cache(feats + 1, valid)), ref)


def test_stack_frames_concatenates_neighbours_and_zeroes_padding():
    feats = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3) + 1
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    stacked, stacked_valid = stack_frames(feats, valid, 2)
    assert stacked.shape == (2, 3, 6)
    assert torch.equal(stacked[0, 1], torch.cat([feats[0, 2], feats[0, 3]]))
    # the odd last frame is padded with zeros; so is the second utterance's invalid frame 3
    assert torch.equal(stacked[0, 2], torch.cat([feats[0, 4], torch.zeros(3)]))
    assert torch.equal(stacked[1, 1], torch.cat([feats[1, 2], torch.zeros(3)]))
    assert stacked_valid.tolist() == [[True, True, True], [True, True, False]]
    same, same_valid = stack_frames(feats, valid, 1)
    assert same is feats and same_valid is valid
    with pytest.raises(ValueError, match="frame_stack must be >= 1"):
        DiffusionDecoder(DecoderConfig(frame_stack=0), V, E)


def test_rope_is_relative():
    cos, sin = rope_tables(16, 8, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        qi = apply_rope(q.expand(1, 1, 16, 8), cos, sin)[0, 0, i]
        kj = apply_rope(k.expand(1, 1, 16, 8), cos, sin)[0, 0, j]
        return float(qi @ kj)

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)


def test_invalid_head_split():
    with pytest.raises(ValueError, match="heads"):
        DiffusionDecoder(DecoderConfig(width=60, heads=8), V, E)


def test_activation_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = DiffusionDecoder(DecoderConfig(layers=2, width=64, heads=4), V, E)
    b = DiffusionDecoder(
        DecoderConfig(layers=2, width=64, heads=4, activation_checkpointing=True), V, E
    )
    b.load_state_dict(a.state_dict())
    feats, valid, tokens = _inputs()
    for m in (a, b):
        m(tokens, m.cross_cache(feats, valid)).square().mean().backward()
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=False):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_where_computes_the_same_logits_at_the_asked_positions_only(dec):
    feats, valid, tokens = _inputs()
    cache = dec.cross_cache(feats, valid)
    where = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1)) < 0.4
    full = dec(tokens, cache)
    part = dec(tokens, cache, None, where)
    assert part.shape == (int(where.sum()), full.shape[-1])  # those positions alone
    assert torch.allclose(part, full[where], atol=1e-5)


def _reuse_steps(dec, feats, valid, tokens, refresh):
    """Four denoising calls on one cache with kept keys (`ReusedKeys(refresh)`): a first step,
    the same canvas again, a canvas with some positions committed, that canvas again. Returns
    the four logits, the exact logits of the two canvases, the rows the first block's MLP ran
    per call, and the committed positions."""
    gen = torch.Generator().manual_seed(5)
    length = tokens.shape[1]
    masked = torch.rand(tokens.shape, generator=gen) < 0.6
    canvas_valid = torch.ones(tokens.shape, dtype=torch.bool)
    canvas_valid[1, length - 3 :] = False
    step1 = torch.where(masked, dec.mask_id, tokens)
    commit = masked & (torch.rand(tokens.shape, generator=gen) < 0.5) & canvas_valid
    step2 = torch.where(commit, tokens, step1)
    read1, read2 = masked & canvas_valid, (step2 == dec.mask_id) & canvas_valid
    cache = dec.cross_cache(feats, valid)
    cache.reuse = ReusedKeys(refresh)
    rows = []
    hook = dec.blocks[0].mlp.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[1]))
    try:
        with torch.no_grad():
            calls = [
                dec(ids, cache, canvas_valid, read)
                for ids, read in [(step1, read1), (step1, read1), (step2, read2), (step2, read2)]
            ]
            exact = [
                dec(ids, dec.cross_cache(feats, valid), canvas_valid, read)
                for ids, read in [(step1, read1), (step2, read2)]
            ]
    finally:
        hook.remove()
    return calls, exact, rows[:4], commit, read1, read2


@pytest.mark.parametrize("align_hidden", [0, 16], ids=["paper", "alignment-prior"])
def test_reused_keys_run_the_read_and_changed_positions_only(align_hidden):
    """`decode.kv_refresh` on the paper's decoder (and with the alignment prior's per-position
    cross-attention biases): the first call is a full pass; a later one runs only the
    positions it reads and those whose token changed (exact when none changed, stale
    otherwise); the `refresh`-th call is a full pass again, exact."""
    torch.manual_seed(0)
    cfg = DecoderConfig(layers=2, width=64, heads=4, align_hidden=align_hidden)
    dec = diffusion_decoder(cfg, V, E).eval()
    feats, valid, tokens = _inputs(n=2, length=12)
    tokens = tokens.clamp(max=V - 1).repeat_interleave(2, dim=0)  # K = 2 rows per utterance
    (first, same, stale, full), (exact1, exact2), rows, commit, read1, read2 = _reuse_steps(
        dec, feats, valid, tokens, refresh=3
    )
    assert torch.allclose(first, exact1, atol=1e-5)
    assert torch.allclose(same, exact1, atol=1e-5)  # nothing changed: the kept keys are exact
    assert torch.allclose(full, exact2, atol=1e-5)  # the third call is a full pass
    assert stale.shape == full.shape and not torch.allclose(stale, full, atol=1e-4)
    assert rows[0] == rows[3] == 12
    assert rows[1] == int(read1.sum(1).max())  # the read positions, padded to the longest row
    assert rows[2] == int((commit | read2).sum(1).max()) < 12
