"""int8 decoding on the CPU (`decode.int8`): close to float, a separate copy, kept fresh."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.model_fixtures import tiny_model
from tests.test_whisper_decoder import PROMPT, features, randomized
from whisfusion.options import DecodeOptions
from whisfusion.quantize import Int8Linear, int8_decoder
from whisfusion.whisper_weights import load_whisper_decoder


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        want, got = lin(x), Int8Linear(lin.weight, lin.bias)(x)
    assert got.shape == want.shape == (3, 5, 96)
    assert (got - want).norm() / want.norm() < 0.02
    # the per-channel scale follows each row: a row 1000x larger is just as close
    with torch.no_grad():
        lin.weight[0] *= 1000
        want, got = lin(x), Int8Linear(lin.weight, lin.bias)(x)
    assert ((got - want)[..., 1:].norm() / want[..., 1:].norm()) < 0.02


def test_int8_copy_of_the_papers_decoder_keeps_its_predictions():
    model = tiny_model()
    q = int8_decoder(model.decoder)
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    assert any(isinstance(m, nn.Linear) for m in model.decoder.modules())  # the model's own
    feats = torch.randn(2, 10, model.encoder.width, generator=torch.Generator().manual_seed(1))
    cache = model.cross_cache(feats, torch.ones(2, 10, dtype=torch.bool))
    tokens = torch.randint(0, model.tokenizer.vocab_size, (2, 16))
    tokens[:, ::2] = model.decoder.mask_id
    with torch.no_grad():
        want, got = model.decoder(tokens, cache), q(tokens, cache)
    # int8 weights and 7-bit activations through every layer: a few percent (a wrong
    # layout or scale would be near 100%)
    assert (got - want).norm() / want.norm() < 0.1


def test_int8_copy_of_whispers_decoder_quantizes_the_tied_output_layer(tmp_path):
    model = randomized()
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_whisper_decoder(tmp_path, PROMPT).eval()
    q = int8_decoder(ours)
    assert isinstance(q.int8_head, Int8Linear) and ours.int8_head is None
    feats = features(model)
    cache = ours.cross_cache(feats, torch.ones(feats.shape[:2], dtype=torch.bool))
    tokens = torch.randint(0, 80, (2, 7), generator=torch.Generator().manual_seed(3))
    tokens[:, 2:5] = ours.mask_id
    with torch.no_grad():
        want, got = ours(tokens, cache), q(tokens, cache)
    # int8 weights and 7-bit activations through every layer: a few percent (a wrong
    # layout or scale would be near 100%)
    assert (got - want).norm() / want.norm() < 0.1


def test_the_copy_is_rebuilt_when_the_weights_change():
    model = tiny_model()
    first = int8_decoder(model.decoder)
    assert int8_decoder(model.decoder) is first
    with torch.no_grad():
        model.decoder.embed.weight.add_(1.0)  # an optimizer step, an EMA swap
    second = int8_decoder(model.decoder)
    assert second is not first
    assert torch.equal(second.embed.weight, model.decoder.embed.weight)


def test_int8_decoding_runs_the_int8_copy_at_every_step():
    model = tiny_model(["decode.candidates=1", "decode.steps=3"])
    options = DecodeOptions.from_config(model.cfg.decode, int8=True)
    calls = []
    int8_decoder(model.decoder).register_forward_hook(lambda *_: calls.append(1))
    feats = torch.randn(2, 10, model.encoder.width, generator=torch.Generator().manual_seed(2))
    valid = torch.ones(2, 10, dtype=torch.bool)
    out = model.decode_features(feats, valid, [1.0, 0.5], ["en", "de"], options)
    assert [t.language for t in out] == ["en", "de"]
    assert len(calls) == 3
    model.decode_features(feats, valid, [1.0, 0.5], ["en", "de"], options.replace(int8=False))
    assert len(calls) == 3


def test_int8_and_compile_are_refused_together():
    model = tiny_model()
    with pytest.raises(ValueError, match="int8"):
        DecodeOptions.from_config(model.cfg.decode, int8=True, compile=True)
