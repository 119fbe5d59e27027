"""Tiny random Whisper models written in every weights format the encoder loader reads.

Reference side of the loader tests: the name mappings here are written out independently of
`whisfusion.encoder.loaders`, from each format's own conventions, so a wrong mapping in the
loader cannot agree with them by construction.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperModel

# CTranslate2 dtype ids (include/ctranslate2/types.h order).
CT2_DTYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def tiny_whisper_config(
    n_mels: int = 80, d_model: int = 64, layers: int = 2, heads: int = 2, n_ctx: int = 50
) -> WhisperConfig:
    """A Whisper config small enough for CPU tests; n_ctx encoder frames = 2 * n_ctx mel frames."""
    return WhisperConfig(
        vocab_size=96,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=layers,
        encoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model,
        decoder_layers=1,
        decoder_attention_heads=heads,
        decoder_ffn_dim=4 * d_model,
        max_source_positions=n_ctx,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
    )


def tiny_whisper_model(seed: int = 0, **config_kwargs) -> WhisperModel:
    """A WhisperModel whose encoder weights are all random and O(1)-scaled (eval mode).

    The last block's final LayerNorm keeps its default (ones, zeros), equal to the decoder's
    LayerNorms: CTranslate2 then stores it as an alias, so the reader's alias path is exercised.
    """
    generator = torch.Generator().manual_seed(seed)
    model = WhisperModel(tiny_whisper_config(**config_kwargs)).eval()
    keep = model.encoder.layers[-1].final_layer_norm
    with torch.no_grad():
        for module in model.encoder.modules():
            if module is keep:
                continue
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, fan_in**-0.5, generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1, generator=generator)
    return model


def reference_encoder_output(model: WhisperModel, mel: torch.Tensor) -> torch.Tensor:
    """Transformers' own encoder: (B, n_mels, 2 * n_ctx) -> (B, n_ctx, d_model)."""
    with torch.no_grad():
        return model.encoder(mel).last_hidden_state


def save_huggingface(
    model: WhisperModel,
    directory: Path,
    conditional: bool = False,
    max_shard_size: str | None = None,
) -> Path:
    """save_pretrained in the WhisperModel layout or, with conditional, the
    WhisperForConditionalGeneration one (`model.encoder.*`); sharded when max_shard_size is set."""
    target = model
    if conditional:
        target = WhisperForConditionalGeneration(model.config)
        target.model.load_state_dict(model.state_dict())
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    target.save_pretrained(directory, safe_serialization=True, **kwargs)
    return directory


def openai_encoder_state(model: WhisperModel) -> dict[str, torch.Tensor]:
    """The encoder's tensors under openai-whisper's names (`encoder.blocks.0.attn.query.weight`)."""
    enc = model.encoder
    state = {
        "encoder.conv1.weight": enc.conv1.weight,
        "encoder.conv1.bias": enc.conv1.bias,
        "encoder.conv2.weight": enc.conv2.weight,
        "encoder.conv2.bias": enc.conv2.bias,
        "encoder.positional_embedding": enc.embed_positions.weight,
        "encoder.ln_post.weight": enc.layer_norm.weight,
        "encoder.ln_post.bias": enc.layer_norm.bias,
    }
    for i, layer in enumerate(enc.layers):
        block = f"encoder.blocks.{i}"
        attn = layer.self_attn
        state.update(
            {
                f"{block}.attn.query.weight": attn.q_proj.weight,
                f"{block}.attn.query.bias": attn.q_proj.bias,
                f"{block}.attn.key.weight": attn.k_proj.weight,
                f"{block}.attn.value.weight": attn.v_proj.weight,
                f"{block}.attn.value.bias": attn.v_proj.bias,
                f"{block}.attn.out.weight": attn.out_proj.weight,
                f"{block}.attn.out.bias": attn.out_proj.bias,
                f"{block}.attn_ln.weight": layer.self_attn_layer_norm.weight,
                f"{block}.attn_ln.bias": layer.self_attn_layer_norm.bias,
                f"{block}.mlp.0.weight": layer.fc1.weight,
                f"{block}.mlp.0.bias": layer.fc1.bias,
                f"{block}.mlp.2.weight": layer.fc2.weight,
                f"{block}.mlp.2.bias": layer.fc2.bias,
                f"{block}.mlp_ln.weight": layer.final_layer_norm.weight,
                f"{block}.mlp_ln.bias": layer.final_layer_norm.bias,
            }
        )
    return {k: v.detach().clone() for k, v in state.items()}


def save_openai(model: WhisperModel, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """An openai-whisper checkpoint: {"dims": ModelDimensions as a dict, "model_state_dict"}."""
    cfg = model.config
    dims = {
        "n_mels": cfg.num_mel_bins,
        "n_vocab": cfg.vocab_size,
        "n_audio_ctx": cfg.max_source_positions,
        "n_audio_state": cfg.d_model,
        "n_audio_head": cfg.encoder_attention_heads,
        "n_audio_layer": cfg.encoder_layers,
        "n_text_ctx": cfg.max_target_positions,
        "n_text_state": cfg.d_model,
        "n_text_head": cfg.decoder_attention_heads,
        "n_text_layer": cfg.decoder_layers,
    }
    state = {k: v.to(dtype) for k, v in openai_encoder_state(model).items()}
    state["decoder.token_embedding.weight"] = model.decoder.embed_tokens.weight.detach().to(dtype)
    torch.save({"dims": dims, "model_state_dict": state}, path)
    return path


def ct2_variables(model: WhisperModel) -> dict[str, np.ndarray]:
    """The variables CTranslate2's Whisper converter writes (encoder, plus a few decoder ones).

    As in its TransformersConverter: q, k, v fused into `self_attention/linear_0` with a zero
    bias for the key rows; LayerNorms as gamma/beta; scalars for the head counts.
    """
    enc = model.encoder

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().numpy().copy()

    v: dict[str, np.ndarray] = {
        "encoder/conv1/weight": arr(enc.conv1.weight),
        "encoder/conv1/bias": arr(enc.conv1.bias),
        "encoder/conv2/weight": arr(enc.conv2.weight),
        "encoder/conv2/bias": arr(enc.conv2.bias),
        "encoder/position_encodings/encodings": arr(enc.embed_positions.weight),
        "encoder/layer_norm/gamma": arr(enc.layer_norm.weight),
        "encoder/layer_norm/beta": arr(enc.layer_norm.bias),
        "encoder/num_heads": np.array(model.config.encoder_attention_heads, dtype=np.int16),
        "decoder/embeddings/weight": arr(model.decoder.embed_tokens.weight),
        "decoder/layer_norm/gamma": arr(model.decoder.layer_norm.weight),
        "decoder/layer_norm/beta": arr(model.decoder.layer_norm.bias),
        "decoder/num_heads": np.array(model.config.decoder_attention_heads, dtype=np.int16),
        "decoder/activation": np.array(3, dtype=np.int8),
    }
    for i, layer in enumerate(enc.layers):
        scope = f"encoder/layer_{i}"
        attn = layer.self_attn
        v[f"{scope}/self_attention/linear_0/weight"] = np.concatenate(
            [arr(attn.q_proj.weight), arr(attn.k_proj.weight), arr(attn.v_proj.weight)]
        )
        v[f"{scope}/self_attention/linear_0/bias"] = np.concatenate(
            [arr(attn.q_proj.bias), np.zeros_like(arr(attn.q_proj.bias)), arr(attn.v_proj.bias)]
        )
        v[f"{scope}/self_attention/linear_1/weight"] = arr(attn.out_proj.weight)
        v[f"{scope}/self_attention/linear_1/bias"] = arr(attn.out_proj.bias)
        v[f"{scope}/self_attention/layer_norm/gamma"] = arr(layer.self_attn_layer_norm.weight)
        v[f"{scope}/self_attention/layer_norm/beta"] = arr(layer.self_attn_layer_norm.bias)
        v[f"{scope}/ffn/linear_0/weight"] = arr(layer.fc1.weight)
        v[f"{scope}/ffn/linear_0/bias"] = arr(layer.fc1.bias)
        v[f"{scope}/ffn/linear_1/weight"] = arr(layer.fc2.weight)
        v[f"{scope}/ffn/linear_1/bias"] = arr(layer.fc2.bias)
        v[f"{scope}/ffn/layer_norm/gamma"] = arr(layer.final_layer_norm.weight)
        v[f"{scope}/ffn/layer_norm/beta"] = arr(layer.final_layer_norm.bias)
    return v


def _quantize(variables: dict[str, np.ndarray], quantization: str) -> dict[str, np.ndarray]:
    """CTranslate2's `LayerSpec._quantize` for float32, float16 and int8 (per-row scales)."""
    out = {}
    for name, value in variables.items():
        if value.ndim == 0 or value.dtype.kind != "f":
            out[name] = value
        elif quantization == "int8" and re.search(r"/linear_\d+/weight$", name):
            amax = np.abs(value).max(axis=1)
            amax[amax == 0] = 127.0
            scale = (127.0 / amax).astype(np.float32)
            out[name] = np.rint(value * scale[:, None]).astype(np.int8)
            out[name + "_scale"] = scale
        elif quantization == "float16":
            out[name] = value.astype(np.float16)
        else:
            out[name] = value.astype(np.float32)
    return out


def _aliases(variables: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """CTranslate2's `_alias_variables`: a non-scalar equal to an earlier one (in name order)
    is replaced by an alias to the first such variable."""
    ordered = sorted(variables.items())
    kept, aliases = {}, {}
    for name, value in ordered:
        target = next(
            (
                other
                for other, other_value in kept.items()
                if value.ndim
                and other_value.shape == value.shape
                and other_value.dtype == value.dtype
                and np.array_equal(other_value, value)
            ),
            None,
        )
        if target is None:
            kept[name] = value
        else:
            aliases[name] = target
    return kept, aliases


def serialize_ct2(
    path: Path,
    variables: dict[str, np.ndarray],
    aliases: dict[str, str],
    spec: str = "WhisperSpec",
    version: int = 6,
) -> None:
    """CTranslate2's `ModelSpec._serialize` byte layout."""
    with open(path, "wb") as f:

        def string(s: str) -> None:
            f.write(struct.pack("<H", len(s.encode()) + 1) + s.encode() + b"\0")

        f.write(struct.pack("<I", version))
        string(spec)
        f.write(struct.pack("<I", 3))
        f.write(struct.pack("<I", len(variables)))
        for name, value in sorted(variables.items()):
            string(name)
            f.write(struct.pack("<B", value.ndim))
            for dim in value.shape:
                f.write(struct.pack("<I", dim))
            f.write(struct.pack("<B", CT2_DTYPE_IDS[value.dtype.name]))
            f.write(struct.pack("<I", value.nbytes))
            f.write(value.tobytes())
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in sorted(aliases.items()):
            string(alias)
            string(target)


def save_ct2(model: WhisperModel, directory: Path, quantization: str = "float32") -> Path:
    """A CTranslate2 model directory (model.bin + config.json) of the model."""
    directory.mkdir(parents=True, exist_ok=True)
    kept, aliases = _aliases(ct2_variables(model))
    serialize_ct2(directory / "model.bin", _quantize(kept, quantization), aliases)
    config = {"alignment_heads": [[0, 0]], "lang_ids": [], "suppress_ids": []}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def hf_encoder_state_from_ct2(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CTranslate2 encoder variables -> transformers WhisperEncoder state_dict (float32)."""

    def f(name: str) -> torch.Tensor:
        return variables[name].float()

    state = {
        "conv1.weight": f("encoder/conv1/weight"),
        "conv1.bias": f("encoder/conv1/bias"),
        "conv2.weight": f("encoder/conv2/weight"),
        "conv2.bias": f("encoder/conv2/bias"),
        "embed_positions.weight": f("encoder/position_encodings/encodings"),
        "layer_norm.weight": f("encoder/layer_norm/gamma"),
        "layer_norm.bias": f("encoder/layer_norm/beta"),
    }
    layer = 0
    while f"encoder/layer_{layer}/ffn/linear_0/weight" in variables:
        s, h = f"encoder/layer_{layer}", f"layers.{layer}"
        q, k, v = f(f"{s}/self_attention/linear_0/weight").chunk(3)
        qb, _, vb = f(f"{s}/self_attention/linear_0/bias").chunk(3)
        state.update(
            {
                f"{h}.self_attn.q_proj.weight": q,
                f"{h}.self_attn.q_proj.bias": qb,
                f"{h}.self_attn.k_proj.weight": k,
                f"{h}.self_attn.v_proj.weight": v,
                f"{h}.self_attn.v_proj.bias": vb,
                f"{h}.self_attn.out_proj.weight": f(f"{s}/self_attention/linear_1/weight"),
                f"{h}.self_attn.out_proj.bias": f(f"{s}/self_attention/linear_1/bias"),
                f"{h}.self_attn_layer_norm.weight": f(f"{s}/self_attention/layer_norm/gamma"),
                f"{h}.self_attn_layer_norm.bias": f(f"{s}/self_attention/layer_norm/beta"),
                f"{h}.fc1.weight": f(f"{s}/ffn/linear_0/weight"),
                f"{h}.fc1.bias": f(f"{s}/ffn/linear_0/bias"),
                f"{h}.fc2.weight": f(f"{s}/ffn/linear_1/weight"),
                f"{h}.fc2.bias": f(f"{s}/ffn/linear_1/bias"),
                f"{h}.final_layer_norm.weight": f(f"{s}/ffn/layer_norm/gamma"),
                f"{h}.final_layer_norm.bias": f(f"{s}/ffn/layer_norm/beta"),
            }
        )
        layer += 1
    return state


def synthetic_waveform(seconds: float, seed: int = 0, freq: float = 440.0) -> torch.Tensor:
    """A sine with a slow amplitude swell plus white noise: (S,) float32 at 16 kHz."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    tone = (
        0.5 * torch.sin(2 * torch.pi * freq * t) * (0.5 + 0.5 * torch.sin(2 * torch.pi * 0.7 * t))
    )
    return (tone + 0.05 * torch.randn(t.shape, generator=generator)).float()
