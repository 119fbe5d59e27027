"""The frozen encoder's contract: shapes, windows and masks, batch invariance, frozenness."""

import hashlib
import math

import pytest
import torch
from torch import nn
from whisper_fixtures import synthetic_waveform

from whisfusion.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
from whisfusion.config import EncoderConfig
from whisfusion.encoder import FrozenWhisperEncoder


def tiny(**kwargs) -> FrozenWhisperEncoder:
    return FrozenWhisperEncoder.random(n_mels=80, width=64, layers=2, heads=2, seed=0, **kwargs)


def clips(*seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) zero-padded batch and (B,) lengths of synthetic clips."""
    waves = [synthetic_waveform(s, seed=i, freq=200.0 + 100 * i) for i, s in enumerate(seconds)]
    lengths = torch.tensor([len(w) for w in waves])
    audio = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        audio[row, : len(wave)] = wave
    return audio, lengths


def test_random_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = tiny(), tiny()
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
    other = FrozenWhisperEncoder.random(seed=1)
    assert not torch.equal(other.model.conv1.weight, a.model.conv1.weight)
    assert a.source == "random:0:n_mels=80,width=64,layers=2,heads=2"
    assert a.sha256 == hashlib.sha256(a.source.encode()).hexdigest() != other.sha256


def test_from_config_random_and_hash_check():
    cfg = EncoderConfig(
        source="random", n_mels=80, width=64, layers=2, heads=2, seed=0, window="trim"
    )
    encoder = FrozenWhisperEncoder.from_config(cfg)
    assert encoder.window == "trim"
    assert torch.equal(encoder.model.conv2.weight, tiny().model.conv2.weight)
    cfg.sha256 = "f" * 64
    with pytest.raises(ValueError, match="expects f+"):
        FrozenWhisperEncoder.from_config(cfg)


def test_thirty_second_mel_gives_1500_frames():
    encoder = tiny()
    mel = torch.randn(2, 80, N_FRAMES)
    out = encoder(mel)
    assert encoder.n_ctx == 1500
    assert out.shape == (2, 1500, 64)


def test_wrong_mel_input_is_refused():
    encoder = tiny()
    with pytest.raises(ValueError, match=r"\(B, 80, frames\).*\(1, 128, 100\)"):
        encoder(torch.zeros(1, 128, 100))
    with pytest.raises(ValueError, match="even"):
        encoder(torch.zeros(1, 80, 101))
    with pytest.raises(ValueError, match="3000"):
        encoder(torch.zeros(1, 80, 3002))


def test_output_layer_reads_an_inner_block_and_runs_no_later_one():
    mel = torch.randn(2, 80, 200)
    full, inner = tiny(), tiny(output_layer=1)
    # block 2 would fail if it ran: reading block 1 must not touch it
    inner.model.blocks[1].forward = lambda x: pytest.fail("block 2 ran")
    got = inner(mel)
    model = full.model
    x = torch.nn.functional.gelu(model.conv1(mel))
    x = torch.nn.functional.gelu(model.conv2(x)).transpose(1, 2)
    x = model.blocks[0](x + model.positional_embedding[: x.shape[1]])
    assert torch.allclose(got, torch.nn.functional.layer_norm(x, (64,)), atol=1e-5)
    assert not torch.allclose(got, full(mel), atol=1e-2)
    # the last block read by number skips Whisper's final LayerNorm and its gain
    last = tiny(output_layer=2)
    with torch.no_grad():
        full.model.ln_post.weight.fill_(2.0)
        last.model.ln_post.weight.fill_(2.0)
    assert torch.allclose(2 * last(mel), full(mel), atol=1e-4)
    with pytest.raises(ValueError, match=r"output_layer must be in \[0, 2\].*got 3"):
        tiny(output_layer=3)


def test_feature_key_changes_with_everything_that_changes_features():
    fp32 = torch.float32
    base = tiny(window="trim", trim_multiple_s=1.0)
    assert base.feature_key(fp32) == tiny(window="trim", trim_multiple_s=1.0).feature_key(fp32)
    others = [
        tiny(window="full"),
        tiny(window="trim", trim_multiple_s=2.0),
        tiny(window="trim", trim_multiple_s=1.0, output_layer=1),
        FrozenWhisperEncoder.random(seed=1, window="trim", trim_multiple_s=1.0),
    ]
    keys = {base.feature_key(fp32), *(o.feature_key(fp32) for o in others)}
    assert len(keys) == 1 + len(others)
    assert base.feature_key(torch.bfloat16) not in keys


def test_bad_window_settings_are_refused():
    with pytest.raises(ValueError, match="window"):
        tiny(window="half")
    with pytest.raises(ValueError, match="trim_multiple_s"):
        tiny(window="trim", trim_multiple_s=0.015)


def test_full_window_pads_to_thirty_seconds_and_masks_padding():
    encoder = tiny(window="full")
    audio, lengths = clips(1.0, 2.5)
    features, valid = encoder.encode(audio, lengths)
    assert features.shape == (2, 1500, 64) and valid.shape == (2, 1500)
    assert valid.sum(1).tolist() == [math.ceil(n / 320) for n in lengths.tolist()]
    assert valid[:, 0].all() and not valid[:, -1].any()
    for row in range(2):
        clip = audio[row, : lengths[row]]
        expected = encoder(log_mel_spectrogram(pad_or_trim(clip), 80)[None])[0]
        torch.testing.assert_close(features[row], expected, rtol=0, atol=1e-5)


def test_inference_precision_is_the_callers_and_training_keeps_float32_on_the_cpu():
    encoder = tiny(window="trim")
    audio, lengths = clips(1.0, 2.5)
    own, valid = encoder.encode(audio, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # Lightning's bf16-mixed on a CPU
        assert torch.equal(encoder.encode(audio, lengths)[0], own)
    assert torch.equal(encoder.encode(audio, lengths, torch.float32)[0], own)
    half, half_valid = encoder.encode(audio, lengths, torch.bfloat16)
    assert half.dtype == torch.float32 and torch.equal(half_valid, valid)
    assert not torch.equal(half, own)  # the matmuls ran in bf16 ...
    torch.testing.assert_close(half, own, rtol=0.1, atol=0.1)  # ... on the same features


def test_samples_past_the_length_do_not_matter():
    encoder = tiny(window="trim")
    audio, lengths = clips(1.0, 2.5)
    noisy = audio.clone()
    noisy[0, lengths[0] :] = 1.0
    assert torch.equal(encoder.encode(noisy, lengths)[0], encoder.encode(audio, lengths)[0])


def test_trim_window_per_clip():
    encoder = tiny(window="trim", trim_multiple_s=2.0)
    audio, lengths = clips(1.0, 3.1)
    features, valid = encoder.encode(audio, lengths)
    # Windows: 2 s -> 100 frames and 4 s -> 200 frames; the batch is padded to the longest.
    assert features.shape == (2, 200, 64)
    assert valid.sum(1).tolist() == [50, math.ceil(3.1 * 16000 / 320)]
    assert torch.equal(valid[0], torch.arange(200) < 50)
    assert features[0, 100:].abs().sum() == 0
    clip = audio[0, : lengths[0]]
    expected = encoder(log_mel_spectrogram(pad_or_trim(clip, 32000), 80)[None])[0]
    torch.testing.assert_close(features[0, :100], expected, rtol=0, atol=1e-5)


def test_trim_window_is_batch_invariant():
    encoder = tiny(window="trim")
    audio, lengths = clips(1.0, 7.9, 1.5)
    alone, alone_valid = encoder.encode(audio[:1, : lengths[0]], lengths[:1])
    frames = alone.shape[1]
    assert frames == 100
    # Beside a clip with a longer window: bit-identical.
    pair, pair_valid = encoder.encode(audio[:2], lengths[:2])
    assert pair.shape[1] == 400
    assert torch.equal(pair[0, :frames], alone[0])
    assert torch.equal(pair_valid[0, :frames], alone_valid[0])
    # Sharing its window with the third clip: equal up to batched-matmul rounding.
    trio, _ = encoder.encode(audio, lengths)
    torch.testing.assert_close(trio[0, :frames], alone[0], rtol=0, atol=1e-5)


def test_features_ignore_the_callers_cpu_autocast():
    # a bf16-mixed training step on a CPU must cache the features inference computes
    encoder = tiny(window="trim")
    audio, lengths = clips(1.0, 2.0)
    plain, _ = encoder.encode(audio, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = encoder.encode(audio, lengths)
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert torch.equal(mixed, plain)


def test_trim_caps_at_thirty_seconds():
    encoder = tiny(window="trim")
    audio = torch.zeros(1, N_SAMPLES + 16000)
    audio[0] = 0.1
    features, valid = encoder.encode(audio, torch.tensor([N_SAMPLES + 16000]))
    assert features.shape == (1, 1500, 64) and valid.all()


def test_encode_rejects_bad_lengths():
    encoder = tiny()
    with pytest.raises(ValueError, match="lengths"):
        encoder.encode(torch.zeros(2, 100), torch.tensor([50, 101]))
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        encoder.encode(torch.zeros(100), torch.tensor([50]))


class Parent(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = tiny()
        self.head = nn.Linear(64, 3)

    def forward(self, mel):
        return self.head(self.encoder(mel))


def test_frozen_in_training():
    torch.manual_seed(0)
    parent = Parent()
    before = {k: v.clone() for k, v in parent.encoder.model.state_dict().items()}
    assert not any(p.requires_grad for p in parent.encoder.parameters())
    optimizer = torch.optim.AdamW([p for p in parent.parameters() if p.requires_grad], lr=1e-2)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in parent.encoder.parameters()}
    head_before = parent.head.weight.clone()
    parent.train()
    assert not parent.encoder.training
    assert not any(m.training for m in parent.encoder.modules())
    assert parent.head.training
    for _ in range(3):
        loss = parent(torch.randn(2, 80, 40)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(parent.head.weight, head_before)
    for key, value in parent.encoder.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_parent_state_dict_excludes_encoder_and_loads_strictly():
    parent = Parent()
    state = parent.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    assert not [k for k in state._metadata if k.startswith("encoder")]
    fresh = Parent()
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.head.weight, parent.head.weight)
    # A checkpoint that carries encoder tensors (an older layout) cannot overwrite them.
    stale = dict(
        state, **{"encoder.model.conv1.weight": torch.zeros_like(parent.encoder.model.conv1.weight)}
    )
    fresh.load_state_dict(stale, strict=True)
    assert torch.equal(fresh.encoder.model.conv1.weight, parent.encoder.model.conv1.weight)
    # A genuinely missing trainable key is still reported.
    with pytest.raises(RuntimeError, match="head.bias"):
        fresh.load_state_dict({"head.weight": state["head.weight"]}, strict=True)
    # The encoder's own state_dict keeps its weights.
    assert "model.conv1.weight" in parent.encoder.state_dict()
