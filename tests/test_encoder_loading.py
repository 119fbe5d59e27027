"""Weights from every format give the encoder transformers computes, and bad input fails clearly."""

import copy
import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from whisper_fixtures import (
    reference_encoder_output,
    save_ct2,
    save_huggingface,
    save_openai,
    serialize_ct2,
    tiny_whisper_model,
)

from whisfusion.config import EncoderConfig
from whisfusion.encoder import FrozenWhisperEncoder, detect_format, load_weights

N_CTX = 50  # tiny encoders: 100 mel frames -> 50 output frames


@pytest.fixture(scope="module")
def hf_model():
    return tiny_whisper_model(seed=0, n_ctx=N_CTX)


@pytest.fixture(scope="module")
def mel():
    return torch.randn(2, 80, 2 * N_CTX, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {
        "hf": save_huggingface(hf_model, root / "hf"),
        "hf-conditional-sharded": save_huggingface(
            hf_model, root / "hf-cond", conditional=True, max_shard_size="100KB"
        ),
        "openai": save_openai(hf_model, root / "tiny.pt"),
        "ct2": save_ct2(hf_model, root / "ct2", "float32"),
        "ct2-fp16": save_ct2(hf_model, root / "ct2-fp16", "float16"),
        "ct2-int8": save_ct2(hf_model, root / "ct2-int8", "int8"),
    }


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("hf", "huggingface"),
        ("hf-conditional-sharded", "huggingface"),
        ("openai", "openai-whisper"),
        ("ct2", "ctranslate2"),
    ],
)
def test_every_format_matches_transformers(saved, hf_model, mel, name, fmt):
    assert detect_format(saved[name]) == fmt
    assert load_weights(saved[name]).format == fmt
    encoder = FrozenWhisperEncoder.from_pretrained(saved[name])
    assert (encoder.n_mels, encoder.width, encoder.n_ctx) == (80, 64, N_CTX)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in encoder.parameters())
    out = encoder(mel)
    assert out.shape == (2, N_CTX, 64)
    assert (out - reference_encoder_output(hf_model, mel)).abs().max() < 1e-4


def test_float32_formats_load_identical_tensors(saved):
    states = [
        FrozenWhisperEncoder.from_pretrained(saved[n]).model.state_dict()
        for n in ("hf", "hf-conditional-sharded", "openai", "ct2")
    ]
    for other in states[1:]:
        assert other.keys() == states[0].keys()
        for key in states[0]:
            assert torch.equal(other[key], states[0][key]), key


def test_float16_ctranslate2_matches_rounded_weights(saved, hf_model, mel):
    rounded = copy.deepcopy(hf_model)
    with torch.no_grad():
        for param in rounded.encoder.parameters():
            param.copy_(param.half().float())
    encoder = FrozenWhisperEncoder.from_pretrained(saved["ct2-fp16"])
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    out = encoder(mel)
    assert (out - reference_encoder_output(rounded, mel)).abs().max() < 1e-4
    # ... and fp16 storage only perturbs the full-precision output slightly.
    assert (out - reference_encoder_output(hf_model, mel)).abs().max() < 2e-2


def test_quantized_ctranslate2_is_refused_with_advice(saved):
    with pytest.raises(ValueError, match=r"int8.*--quantization float16"):
        FrozenWhisperEncoder.from_pretrained(saved["ct2-int8"])


def test_sha256_is_the_hash_of_the_weights_file(saved):
    path = saved["openai"]
    encoder = FrozenWhisperEncoder.from_pretrained(path)
    assert encoder.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert encoder.source == str(path)
    ct2 = FrozenWhisperEncoder.from_pretrained(saved["ct2"])
    assert ct2.sha256 == hashlib.sha256((saved["ct2"] / "model.bin").read_bytes()).hexdigest()


def test_from_config_checks_the_hash(saved):
    path = str(saved["openai"])
    good = FrozenWhisperEncoder.from_pretrained(path).sha256
    assert FrozenWhisperEncoder.from_config(EncoderConfig(source=path, sha256=good)).sha256 == good
    with pytest.raises(ValueError, match=f"sha256 {good}.*expects 0+"):
        FrozenWhisperEncoder.from_config(EncoderConfig(source=path, sha256="0" * 64))


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FrozenWhisperEncoder.from_pretrained(tmp_path / "nowhere")


def test_corrupt_files_are_named(tmp_path):
    garbage = bytes(range(256)) * 40
    pt = tmp_path / "model.pt"
    pt.write_bytes(garbage)
    with pytest.raises(ValueError, match="model.pt: unrecognised weights file"):
        FrozenWhisperEncoder.from_pretrained(pt)
    zipped = tmp_path / "broken.pt"
    zipped.write_bytes(b"PK" + garbage)
    with pytest.raises(ValueError, match="broken.pt: cannot read openai-whisper checkpoint"):
        FrozenWhisperEncoder.from_pretrained(zipped)
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(garbage)
    with pytest.raises(ValueError, match="model.bin: not a CTranslate2 model.bin"):
        FrozenWhisperEncoder.from_pretrained(ct2)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (hf / "model.safetensors").write_bytes(garbage)
    with pytest.raises(ValueError, match="config.json: missing Whisper config key 'num_mel_bins'"):
        FrozenWhisperEncoder.from_pretrained(hf)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a Whisper model directory"):
        FrozenWhisperEncoder.from_pretrained(empty)


def test_corrupt_safetensors_is_named(saved, tmp_path):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "config.json").write_text((saved["hf"] / "config.json").read_text())
    (target / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="model.safetensors: cannot read safetensors file"):
        FrozenWhisperEncoder.from_pretrained(target)


def test_truncated_ctranslate2_file(saved, tmp_path):
    target = tmp_path / "ct2"
    target.mkdir()
    data = (saved["ct2"] / "model.bin").read_bytes()
    (target / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.bin: truncated"):
        FrozenWhisperEncoder.from_pretrained(target)


def test_shape_mismatch_names_the_tensor(saved, tmp_path):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "config.json").write_text((saved["hf"] / "config.json").read_text())
    tensors = load_file(saved["hf"] / "model.safetensors")
    tensors["encoder.layers.1.fc1.weight"] = torch.zeros(200, 64)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError,
        match=r"encoder\.layers\.1\.fc1\.weight has shape \[200, 64\], expected \[256, 64\]",
    ):
        FrozenWhisperEncoder.from_pretrained(target)


def test_missing_tensor_is_named(saved, tmp_path):
    checkpoint = torch.load(saved["openai"], weights_only=True)
    del checkpoint["model_state_dict"]["encoder.blocks.0.attn.out.bias"]
    path = tmp_path / "partial.pt"
    torch.save(checkpoint, path)
    with pytest.raises(
        ValueError, match=r"partial.pt: missing tensor encoder\.blocks\.0\.attn\.out\.bias"
    ):
        FrozenWhisperEncoder.from_pretrained(path)


def test_foreign_ctranslate2_models_are_refused(tmp_path):
    variables = {"encoder/num_heads": np.array(2, dtype=np.int16)}
    translation = tmp_path / "translation"
    translation.mkdir()
    serialize_ct2(translation / "model.bin", variables, {}, spec="TransformerSpec")
    with pytest.raises(ValueError, match="'TransformerSpec' model, not a Whisper model"):
        FrozenWhisperEncoder.from_pretrained(translation)
    future = tmp_path / "future"
    future.mkdir()
    serialize_ct2(future / "model.bin", variables, {}, version=7)
    with pytest.raises(ValueError, match="binary version 7"):
        FrozenWhisperEncoder.from_pretrained(future)
