"""The decoder started from Whisper's own: weights loaded exactly, the canvas mapping, K rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration

from tests.whisper_fixtures import (
    _aliases,
    _quantize,
    ct2_variables,
    serialize_ct2,
    tiny_whisper_config,
)
from whisfusion.kv_reuse import ReusedKeys, query_positions
from whisfusion.whisper_decoder import WhisperPrompt, annealed_causal_mask
from whisfusion.whisper_weights import load_whisper_decoder

# tiny_whisper_config's vocabulary of 96: 3 = decoder start, specials above 80
PROMPT = WhisperPrompt(sot=80, task=81, no_timestamps=82)


def randomized(seed: int = 0) -> WhisperForConditionalGeneration:
    """A tiny Whisper with every decoder weight random (LayerNorms and biases included), eval."""
    gen = torch.Generator().manual_seed(seed)
    cfg = tiny_whisper_config()
    cfg.decoder_layers = 2
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.model.decoder.named_parameters():
            scale = 0.3 if "weight" in name and p.ndim == 2 else 0.1
            base = 1.0 if name.endswith("layer_norm.weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = randomized()
    directory = tmp_path_factory.mktemp("hf")
    model.save_pretrained(directory, safe_serialization=True)
    return model, load_whisper_decoder(directory, PROMPT).eval()


def features(model, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, 80, 100, generator=gen)
    with torch.no_grad():
        return model.model.encoder(mel).last_hidden_state


def test_causal_decoder_reproduces_transformers_logits(tiny):
    """With a causal mask, no [MASK] and no shift, the loaded module is Whisper's decoder."""
    model, ours = tiny
    feats = features(model)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(encoder_outputs=(feats,), decoder_input_ids=ids).logits
        cache = ours.cross_cache(feats, torch.ones(feats.shape[:2], dtype=torch.bool))
        got = ours.logits_at(ours.hidden(ids, cache, causal=True))
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_canvas_position_reads_whisper_position_before_it(tiny):
    """Dream's shift: canvas position 0 (language) is Whisper's prediction after
    <|startoftranscript|>, text token j its prediction after the token before j."""
    model, ours = tiny
    feats = features(model, batch=1)
    canvas = torch.tensor([[50, 10, 11, 12, 2, 2]])
    whisper = torch.tensor([[80, 50, 81, 82, 10, 11, 12, 2, 2]])
    with torch.no_grad():
        expected = model(encoder_outputs=(feats,), decoder_input_ids=whisper).logits
        cache = ours.cross_cache(feats, torch.ones(feats.shape[:2], dtype=torch.bool))
        got = ours.logits_at(ours.canvas_hidden(canvas, cache, None, causal=True))
    assert torch.allclose(got[:, 0], expected[:, 0], atol=1e-4)
    assert torch.allclose(got[:, 1:], expected[:, 3:8], atol=1e-4)


def test_rows_share_the_cache_and_padding_frames_are_ignored(tiny):
    """K candidate rows per utterance give each row's own result; frames past the audio's end
    change nothing."""
    model, ours = tiny
    feats = features(model)
    valid = torch.ones(feats.shape[:2], dtype=torch.bool)
    valid[1, 30:] = False
    tokens = torch.randint(0, 80, (4, 7), generator=torch.Generator().manual_seed(3))
    tokens[:, 2] = ours.mask_id
    with torch.no_grad():
        both = ours(tokens, ours.cross_cache(feats, valid))
        noisy = feats.clone()
        noisy[1, 30:] = 100.0
        alone = ours(tokens[2:], ours.cross_cache(noisy[1:], valid[1:]))
    assert both.shape == (4, 7, 96)
    assert torch.allclose(both[2:], alone, atol=1e-4)
    assert not torch.allclose(both[0], both[2], atol=1e-3)


def test_mask_is_never_predicted_and_starts_at_the_mean_text_embedding(tiny):
    _, ours = tiny
    assert ours.mask_id == ours.vocab_size == 96
    mean = ours.token_embedding.weight[: PROMPT.sot - 1].mean(0)
    assert torch.allclose(ours.mask_embed, mean)


def ct2_decoder_variables(model: WhisperForConditionalGeneration) -> dict:
    """The decoder variables CTranslate2's Whisper converter writes (q, k, v fused with a zero
    key bias; cross-attention k, v fused; LayerNorms as gamma / beta)."""
    dec = model.model.decoder

    def arr(t):
        return t.detach().float().numpy().copy()

    v = {
        "decoder/embeddings/weight": arr(dec.embed_tokens.weight),
        "decoder/position_encodings/encodings": arr(dec.embed_positions.weight),
        "decoder/layer_norm/gamma": arr(dec.layer_norm.weight),
        "decoder/layer_norm/beta": arr(dec.layer_norm.bias),
        "decoder/num_heads": np.array(model.config.decoder_attention_heads, dtype=np.int16),
    }
    for i, layer in enumerate(dec.layers):
        s, a, c = f"decoder/layer_{i}", layer.self_attn, layer.encoder_attn
        zero = np.zeros_like(arr(a.q_proj.bias))
        v[f"{s}/self_attention/linear_0/weight"] = np.concatenate(
            [arr(a.q_proj.weight), arr(a.k_proj.weight), arr(a.v_proj.weight)]
        )
        v[f"{s}/self_attention/linear_0/bias"] = np.concatenate(
            [arr(a.q_proj.bias), zero, arr(a.v_proj.bias)]
        )
        v[f"{s}/attention/linear_1/weight"] = np.concatenate(
            [arr(c.k_proj.weight), arr(c.v_proj.weight)]
        )
        v[f"{s}/attention/linear_1/bias"] = np.concatenate([zero, arr(c.v_proj.bias)])
        pairs = {
            "self_attention/linear_1": a.out_proj,
            "attention/linear_0": c.q_proj,
            "attention/linear_2": c.out_proj,
            "ffn/linear_0": layer.fc1,
            "ffn/linear_1": layer.fc2,
        }
        for name, lin in pairs.items():
            v[f"{s}/{name}/weight"], v[f"{s}/{name}/bias"] = arr(lin.weight), arr(lin.bias)
        norms = {
            "self_attention/layer_norm": layer.self_attn_layer_norm,
            "attention/layer_norm": layer.encoder_attn_layer_norm,
            "ffn/layer_norm": layer.final_layer_norm,
        }
        for name, ln in norms.items():
            v[f"{s}/{name}/gamma"], v[f"{s}/{name}/beta"] = arr(ln.weight), arr(ln.bias)
    return v


@pytest.mark.parametrize("quantization", ["float32", "float16"])
def test_ctranslate2_decoder_loads_the_same_weights(tiny, tmp_path, quantization):
    model, ours = tiny
    variables = {**ct2_variables(model.model), **ct2_decoder_variables(model)}
    kept, aliases = _aliases(variables)
    serialize_ct2(tmp_path / "model.bin", _quantize(kept, quantization), aliases)
    loaded = load_whisper_decoder(tmp_path, PROMPT)
    tol = 0 if quantization == "float32" else 1e-3
    for name, tensor in ours.state_dict().items():
        assert torch.allclose(loaded.state_dict()[name], tensor, atol=tol, rtol=tol), name


def test_weights_without_a_decoder_are_refused(tmp_path):
    model = randomized()
    serialize_ct2(tmp_path / "model.bin", *_aliases(ct2_variables(model.model)))
    with pytest.raises(ValueError, match="decoder"):
        load_whisper_decoder(tmp_path, PROMPT)


@pytest.mark.parametrize("future_share", [1.0, 0.5])
def test_where_computes_the_same_logits_at_the_asked_positions_only(tiny, future_share):
    """Ragged positions per row (two candidate rows per utterance, a padded canvas), the last
    block run there alone: the logits every position would have there, in eval and in a
    training forward whose self-attention is partly causal."""
    model, ours = tiny
    feats = features(model)
    cache = ours.cross_cache(feats, torch.ones(feats.shape[:2], dtype=torch.bool))
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 80, (4, 9), generator=gen)
    tokens[torch.rand(4, 9, generator=gen) < 0.5] = ours.mask_id
    canvas_valid = torch.ones(4, 9, dtype=torch.bool)
    canvas_valid[2:, 6:] = False
    where = (torch.rand(4, 9, generator=gen) < 0.5) & canvas_valid
    where[3] = False  # a row with nothing to read
    where[0, 0] = True  # the language position, read at <|startoftranscript|>
    ours.train(future_share < 1)
    ours.future_share = future_share
    try:
        with torch.no_grad():
            torch.manual_seed(0)  # the annealed mask's draw
            full = ours(tokens, cache, canvas_valid)
            torch.manual_seed(0)
            part = ours(tokens, cache, canvas_valid, where)
    finally:
        ours.eval()
        ours.future_share = 1.0
    assert part.shape == (int(where.sum()), full.shape[-1])  # those positions alone
    assert torch.allclose(part, full[where], atol=1e-5)


class RowCounter:
    """Counts the rows a module runs on (a forward hook)."""

    def __init__(self, module):
        self.rows = []
        self.handle = module.register_forward_hook(lambda m, i, o: self.rows.append(i[0].shape))


def test_reused_keys_run_the_read_and_changed_positions_and_refresh_on_schedule(tiny):
    """`ReusedKeys`: the first call is a full pass; a later one runs only the positions it reads
    and those whose token changed, the rest attend with their kept keys (exact when no token
    changed, stale otherwise); every `refresh`-th call is a full pass again, exact."""
    model, ours = tiny
    feats = features(model)
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 80, (4, 9), generator=gen)  # two candidate rows per utterance
    masked = torch.rand(4, 9, generator=gen) < 0.6
    masked[:, 0] = True
    canvas_valid = torch.ones(4, 9, dtype=torch.bool)
    canvas_valid[2:, 7:] = False
    step1 = torch.where(masked, ours.mask_id, tokens)
    step2 = step1.clone()
    commit = masked & (torch.rand(4, 9, generator=gen) < 0.5) & canvas_valid
    step2[commit] = tokens[commit]
    where2 = (step2 == ours.mask_id) & canvas_valid
    cache = ours.cross_cache(feats, torch.ones(feats.shape[:2], dtype=torch.bool))
    cache.reuse = ReusedKeys(refresh=3)
    counter = RowCounter(ours.blocks[0].mlp)

    def exact(ids, where):
        plain = ours.cross_cache(feats, torch.ones(feats.shape[:2], dtype=torch.bool))
        return ours(ids, plain, canvas_valid, where)

    try:
        with torch.no_grad():
            first = ours(step1, cache, canvas_valid, masked & canvas_valid)
            same = ours(step1, cache, canvas_valid, masked & canvas_valid)
            stale = ours(step2, cache, canvas_valid, where2)
            full = ours(step2, cache, canvas_valid, where2)  # the third call: a full pass
    finally:
        counter.handle.remove()
    assert torch.allclose(first, exact(step1, masked & canvas_valid), atol=1e-5)
    assert torch.allclose(same, first, atol=1e-5)
    assert torch.allclose(full, exact(step2, where2), atol=1e-5)
    assert not torch.allclose(stale, full, atol=1e-4)  # the kept keys are stale
    assert stale.shape == full.shape
    # rows of the Whisper sequence (9 canvas positions + 3 prompt tokens) each call ran
    run = [rows * length for rows, length, _ in counter.rows]
    read = (masked & canvas_valid).sum(1)
    assert run[0] == run[3] == 4 * 12
    assert run[1] == 4 * int(read.max())  # the read positions, padded to the longest row
    changed = ours.around_prompt(commit, False, False, False)  # in the Whisper sequence
    read2 = torch.zeros_like(changed)
    read2[:, 0], read2[:, 3:11] = where2[:, 0], where2[:, 1:]
    assert run[2] == 4 * int((changed | read2).sum(1).max()) < 4 * 12


def test_reused_keys_are_cut_with_the_canvas_and_dropped_for_other_rows(tiny):
    """After the length step the canvas gets narrower: the kept keys are cut to it; a call on
    other rows (a new batch) is a full pass."""
    model, ours = tiny
    feats = features(model, batch=1)
    cache = ours.cross_cache(feats, torch.ones(feats.shape[:2], dtype=torch.bool))
    cache.reuse = reuse = ReusedKeys(refresh=8)
    wide = torch.full((1, 9), ours.mask_id)
    with torch.no_grad():
        ours(wide, cache, None, torch.ones(1, 9, dtype=torch.bool))
        narrow = ours(wide[:, :6], cache, None, torch.ones(1, 6, dtype=torch.bool))
    assert reuse.ids.shape == (1, 9) and reuse.keys[0].shape[2] == 9
    assert reuse.holds(torch.zeros(1, 7, dtype=torch.long))
    assert not reuse.holds(torch.zeros(2, 7, dtype=torch.long))  # other rows
    assert not reuse.holds(torch.zeros(1, 12, dtype=torch.long))  # wider
    assert narrow.shape == (6, 96)
    reuse.calls = 8  # a refresh is due
    assert not reuse.holds(torch.zeros(1, 7, dtype=torch.long))


def test_query_positions_list_each_rows_positions_in_order():
    where = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    index, kept = query_positions(where)
    assert index.tolist() == [[1, 3, 4], [0, 0, 0], [0, 0, 0]]
    assert torch.equal(index[kept], where.nonzero()[:, 1])


def test_annealed_mask_opens_from_causal_to_bidirectional():
    torch.manual_seed(0)
    left = torch.ones(40, 40, dtype=torch.bool).tril()
    assert torch.equal(annealed_causal_mask(40, 0.0), left)
    half = annealed_causal_mask(40, 0.5)
    assert half[left].all()  # the left context is always seen
    future = half[~left].float().mean().item()
    assert 0.4 < future < 0.6
    assert annealed_causal_mask(40, 1.0).all()


def test_future_share_masks_later_positions_in_training_only(tiny):
    """At share 0 a training forward is Whisper's causal reading; eval stays bidirectional."""
    model, ours = tiny
    feats = features(model, batch=1)
    cache = ours.cross_cache(feats, torch.ones(feats.shape[:2], dtype=torch.bool))
    ids = torch.randint(0, 80, (1, 9), generator=torch.Generator().manual_seed(4))
    try:
        ours.future_share = 0.0
        with torch.no_grad():
            ours.train()
            annealed = ours.hidden(ids, cache)
            ours.eval()
            causal = ours.hidden(ids, cache, causal=True)
            bidirectional = ours.hidden(ids, cache)
    finally:
        ours.future_share = 1.0
        ours.eval()
    assert torch.allclose(annealed, causal, atol=1e-5)
    assert not torch.allclose(bidirectional[:, :-1], causal[:, :-1], atol=1e-3)
