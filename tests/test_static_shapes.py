"""Static decoding shapes: canvas buckets, encoder frames cut to the audio, the compiled step."""

import weakref

import pytest
import torch

from whisfusion.config import DecodeConfig, DecoderConfig, load_config
from whisfusion.decoders import diffusion_decoder
from whisfusion.model import Whisfusion
from whisfusion.options import DecodeOptions
from whisfusion.pdd import canvas_for, compiled, options_from_config, pdd_decode
from whisfusion.pdd.buckets import bucket_length, length_groups, pad_to_bucket, trim_frames
from whisfusion.tokenizer import train_tokenizer

V, E = 40, 32


def test_bucket_length_picks_the_smallest_fitting_bucket_and_never_cuts():
    assert bucket_length(24, [64, 128], 448) == 64
    assert bucket_length(64, [64, 128], 448) == 64
    assert bucket_length(200, [64, 128], 448) == 448
    assert bucket_length(40, [512], 448) == 448  # buckets past max_len are not used
    assert bucket_length(40, [], 32) == 40


def test_pad_to_bucket_adds_invalid_eos_columns():
    canvas, valid = canvas_for([5, 3], mask_id=V, eos_id=1)
    padded, pvalid = pad_to_bucket(canvas, valid, [8, 16], 448, eos_id=1)
    assert padded.shape == pvalid.shape == (2, 8)
    assert torch.equal(padded[:, :5], canvas) and torch.equal(pvalid[:, :5], valid)
    assert bool((padded[:, 5:] == 1).all()) and not bool(pvalid[:, 5:].any())
    assert pad_to_bucket(canvas, valid, [], 448, eos_id=1)[0] is canvas


def _decoder(**over):
    torch.manual_seed(0)
    cfg = DecoderConfig(layers=2, width=64, heads=4, **over)
    return diffusion_decoder(cfg, V, E).eval()


@pytest.mark.parametrize("over", [{}, {"frame_stack": 2, "align_hidden": 32, "align_context": 3}])
def test_trimmed_frames_give_the_same_logits(over):
    dec = _decoder(**over)
    feats = torch.randn(2, 30, E, generator=torch.Generator().manual_seed(1))
    valid = torch.arange(30)[None, :] < torch.tensor([[11], [7]])
    short, short_valid = trim_frames(feats, valid)
    assert short.shape[1] == 11 and torch.equal(short_valid, valid[:, :11])
    assert trim_frames(feats, valid, multiple=8)[0].shape[1] == 16
    tokens = torch.randint(2, V + 1, (4, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = dec(tokens, dec.cross_cache(feats, valid))
        cut = dec(tokens, dec.cross_cache(short, short_valid))
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)


def test_bucketed_canvas_decodes_the_same_greedy_tokens():
    dec = _decoder()
    feats = torch.randn(2, 9, E, generator=torch.Generator().manual_seed(3))
    cache = dec.cross_cache(feats, torch.ones(2, 9, dtype=torch.bool))
    out = []
    for buckets in ([], [32]):
        canvas, valid = pad_to_bucket(*canvas_for([10, 6], V, 1), buckets, 448, eos_id=1)
        rows = valid.repeat_interleave(2, dim=0)
        res = pdd_decode(
            lambda x, c, where, rows=rows: dec(x, c, rows)[where],
            cache,
            canvas,
            valid,
            mask_id=V,
            eos_id=1,
            **options_from_config(DecodeConfig(candidates=2, temperature=0.0)),
        )
        out.append(res.tokens[..., :10])
    assert out[1].shape == out[0].shape
    assert torch.equal(out[0], out[1])


@pytest.fixture(scope="module")
def tiny_model():
    lines = ["the cat sat on the mat", "der Hund schläft"] * 30
    tok = train_tokenizer(lines, ["en", "de"], vocab_size=300)
    cfg = load_config("configs/tiny.yaml", ["model.canvas.r_max=6"])
    torch.manual_seed(0)
    return Whisfusion.from_config(cfg, tok).eval()


def _transcripts(model, **decode):
    audio = torch.randn(2, 16000, generator=torch.Generator().manual_seed(4)) * 0.1
    features, valid = model.encode(audio, torch.tensor([16000, 9000]))
    options = DecodeOptions.from_config(model.cfg.decode, candidates=3, select="rover", **decode)
    out = model.decode_features(features, valid, [1.0, 0.56], ["en", None], options=options)
    return [(t.text, t.language, t.candidates) for t in out]


def test_model_decodes_the_same_with_bucketed_canvases_and_trimmed_frames(tiny_model, monkeypatch):
    # compile=True pads canvases to buckets; the compiler itself is left out here (slow test)
    seen = []

    def spy(module, **kwargs):
        def call(tokens, cache, *args):
            seen.append((tokens.shape[1], cache.key_valid.shape[1]))
            return module(tokens, cache, *args)

        return call

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.setattr(compiled, "_COMPILED", weakref.WeakKeyDictionary())
    greedy = {"temperature": 0.0}
    eager = _transcripts(tiny_model, **greedy)
    assert _transcripts(tiny_model, compile=True, canvas_buckets=[48], **greedy) == eager
    # a 48-wide canvas; 50 Hz frames of the 1 s clip (the trim window), a multiple of 100
    assert set(seen) == {(48, compiled.FRAME_MULTIPLE)}


def test_length_groups_bound_the_padding_of_each_group():
    lengths = [16, 200, 24, 192, 16, 100]
    groups = length_groups(lengths, 0.25)
    assert groups == [[1, 3], [5], [2], [0, 4]]
    for group in groups:
        width = max(lengths[i] for i in group)
        assert all(width - lengths[i] <= 0.25 * width for i in group)
    assert length_groups(lengths, 1.0) == [[1, 3, 5, 2, 0, 4]]
    assert length_groups(lengths, 0.0) == [[1], [3], [5], [2], [0, 4]]


def test_a_mixed_batch_decodes_in_groups_the_same_greedy_transcripts(tiny_model, monkeypatch):
    widths = []
    decode = tiny_model.decoder.forward

    def spy(tokens, cache, *args):
        widths.append(tokens.shape[0])
        return decode(tokens, cache, *args)

    monkeypatch.setattr(tiny_model.decoder, "forward", spy)
    audio = torch.randn(3, 64000, generator=torch.Generator().manual_seed(5)) * 0.1
    lengths = torch.tensor([64000, 8000, 60000])
    features, valid = tiny_model.encode(audio, lengths)
    durations = (lengths / 16000).tolist()

    def run(max_padding):
        widths.clear()
        options = DecodeOptions.from_config(
            tiny_model.cfg.decode, candidates=1, max_padding=max_padding
        )
        out = tiny_model.decode_features(features, valid, durations, ["en", "de", "en"], options)
        return [(t.text, t.language) for t in out], list(widths)

    together, rows_together = run(1.0)
    grouped, rows_grouped = run(0.25)
    assert grouped == together
    assert set(rows_together) == {3}
    assert set(rows_grouped) == {2, 1}  # the 4 s and 3.75 s clips, then the 0.5 s one


@pytest.mark.slow
def test_compiled_denoiser_decodes_what_eager_decodes(tiny_model):
    # minutes on a small CPU: every new shape is compiled
    greedy = {"temperature": 0.0}
    eager = _transcripts(tiny_model, **greedy)
    assert _transcripts(tiny_model, compile=True, canvas_buckets=[48], **greedy) == eager
