"""The training step's input: encoder output cut to the batch's audio loses nothing."""

from __future__ import annotations

import torch
from model_fixtures import tiny_model

from whisfusion.data.samples import HOST_LENGTHS
from whisfusion.encoder.windows import trim_to_audio
from whisfusion.lightning_module import WhisfusionModule


def test_cutting_a_30_s_window_to_the_audio_changes_no_loss():
    module = WhisfusionModule(tiny_model(["model.encoder.window=full"]))
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([8000, 13000])  # 0.5 s and 0.8 s
    audio = torch.randn(2, 13000, generator=g) * (torch.arange(13000) < lens[:, None])
    feats, valid = module.model.encode(audio, lens)
    assert feats.shape[1] == 1500  # the whole 30 s window
    cut, cut_valid = trim_to_audio(feats, valid, audio.shape[1])
    assert cut.shape[1] == 41 and torch.equal(cut_valid, valid[:, :41])  # ceil(13000 / 320)
    assert not valid[:, 41:].any()
    tokens = torch.randint(5, 100, (2, 16), generator=g)
    batch = {"tokens": tokens, "canvas_valid": torch.ones(2, 16, dtype=torch.bool)}
    losses = [
        module.loss(batch, 0, torch.Generator().manual_seed(1), features=f)[0]
        for f in ((feats, valid), (cut, cut_valid))
    ]
    assert torch.allclose(losses[0], losses[1], atol=1e-5), losses
    # the step's own path cuts: what it reads equals the cut above
    got, got_valid = module.features({"audio": audio, "audio_lens": lens})
    assert torch.equal(got, cut) and torch.equal(got_valid, cut_valid)


def test_host_lengths_give_the_same_features_as_device_lengths():
    module = WhisfusionModule(tiny_model(["model.encoder.window=trim"]))
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([8000, 40000])
    audio = torch.randn(2, 40000, generator=g) * (torch.arange(40000) < lens[:, None])
    plain = module.features({"audio": audio, "audio_lens": lens})
    hosted = module.features({"audio": audio, "audio_lens": lens, HOST_LENGTHS: lens.tolist()})
    assert all(torch.equal(a, b) for a, b in zip(plain, hosted, strict=True))
