"""Whisper's pretrained decoder, read from the formats the encoder loads, as a `WhisperDenoiser`.

Every format is mapped onto openai-whisper's names (`token_embedding.weight`,
`positional_embedding`, `blocks.N.{attn,cross_attn}.{query,key,value,out}`,
`blocks.N.{attn_ln,cross_attn_ln,mlp_ln}`, `blocks.N.mlp.{0,2}`, `ln`), which are
`WhisperDenoiser`'s own:
- Hugging Face directory (`model.decoder.*` or `decoder.*`, safetensors);
- openai-whisper `.pt` checkpoint (`decoder.*`);
- CTranslate2 directory (`decoder/...`): the self-attention projection is fused [q; k; v], the
  cross-attention's key/value projection is fused [k; v]; the output projection is an alias of
  the token embedding (tied, as in Whisper).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from whisfusion.config import DecoderConfig
from whisfusion.encoder import FrozenWhisperEncoder
from whisfusion.encoder.ctranslate2 import read_encoder_variables
from whisfusion.encoder.loaders import CT2_WEIGHTS, HF_CONFIG, HF_INDEX, HF_WEIGHTS, detect_format
from whisfusion.whisper_decoder import WhisperDecoderDims, WhisperDenoiser, WhisperPrompt
from whisfusion.whisper_tokenizer import WhisperTokenizer

_HF_LEAF = {
    "token_embedding.weight": "embed_tokens.weight",
    "positional_embedding": "embed_positions.weight",
    "ln.weight": "layer_norm.weight",
    "ln.bias": "layer_norm.bias",
}
_HF_BLOCK = {
    "attn_ln": "self_attn_layer_norm",
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj",
    "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj",
    "cross_attn.out": "encoder_attn.out_proj",
    "mlp_ln": "final_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
}
# CTranslate2 variable of each block part, and (index, count) of its rows in a fused projection.
_CT2_BLOCK = {
    "attn_ln": ("self_attention/layer_norm", None),
    "attn.query": ("self_attention/linear_0", (0, 3)),
    "attn.key": ("self_attention/linear_0", (1, 3)),
    "attn.value": ("self_attention/linear_0", (2, 3)),
    "attn.out": ("self_attention/linear_1", None),
    "cross_attn_ln": ("attention/layer_norm", None),
    "cross_attn.query": ("attention/linear_0", None),
    "cross_attn.key": ("attention/linear_1", (0, 2)),
    "cross_attn.value": ("attention/linear_1", (1, 2)),
    "cross_attn.out": ("attention/linear_2", None),
    "mlp_ln": ("ffn/layer_norm", None),
    "mlp.0": ("ffn/linear_0", None),
    "mlp.2": ("ffn/linear_1", None),
}
_CT2_LEAF = {
    "token_embedding.weight": "decoder/embeddings/weight",
    "positional_embedding": "decoder/position_encodings/encodings",
    "ln.weight": "decoder/layer_norm/gamma",
    "ln.bias": "decoder/layer_norm/beta",
}
_NORM_LEAF = {"weight": "gamma", "bias": "beta"}


def _block_name(name: str) -> tuple[int, str, str]:
    """`blocks.3.cross_attn.key.weight` -> (3, "cross_attn.key", "weight")."""
    parts = name.split(".")
    return int(parts[1]), ".".join(parts[2:-1]), parts[-1]


def _hf_state(directory: Path) -> tuple[dict[str, torch.Tensor], int]:
    """openai-named decoder tensors and the head count of a Hugging Face Whisper directory."""
    files = [directory / HF_WEIGHTS]
    if not files[0].is_file():
        weight_map = json.loads((directory / HF_INDEX).read_text())["weight_map"]
        files = [directory / name for name in sorted(set(weight_map.values()))]
    raw: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if ".decoder." in f".{key}":
                    raw[key.split("decoder.", 1)[1]] = f.get_tensor(key)
    state = {}
    for name in _expected_names(_count(raw, r"layers\.(\d+)\.")):
        if name in _HF_LEAF:
            source = _HF_LEAF[name]
        else:
            i, part, leaf = _block_name(name)
            source = f"layers.{i}.{_HF_BLOCK[part]}.{leaf}"
        state[name] = _require(raw, source, directory)
    heads = json.loads((directory / HF_CONFIG).read_text())["decoder_attention_heads"]
    return state, int(heads)


def _ct2_state(directory: Path) -> tuple[dict[str, torch.Tensor], int]:
    """openai-named decoder tensors and the head count of a CTranslate2 Whisper directory."""
    model_bin = directory / CT2_WEIGHTS
    raw = read_encoder_variables(model_bin, prefix="decoder/")
    state = {}
    for name in _expected_names(_count(raw, r"decoder/layer_(\d+)/")):
        if name in _CT2_LEAF:
            state[name] = _require(raw, _CT2_LEAF[name], model_bin)
            continue
        i, part, leaf = _block_name(name)
        variable, fused = _CT2_BLOCK[part]
        suffix = _NORM_LEAF[leaf] if part.endswith("_ln") else leaf
        tensor = _require(raw, f"decoder/layer_{i}/{variable}/{suffix}", model_bin)
        if fused is not None:
            index, count = fused
            tensor = tensor.chunk(count)[index]
        state[name] = tensor
    return state, int(_require(raw, "decoder/num_heads", model_bin))


def _openai_state(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    raw = {
        k[len("decoder.") :]: v
        for k, v in ckpt["model_state_dict"].items()
        if k.startswith("decoder.")
    }
    layers = _count(raw, r"blocks\.(\d+)\.")
    state = {name: _require(raw, name, path) for name in _expected_names(layers)}
    return state, int(ckpt["dims"]["n_text_head"])


def _count(raw: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in raw if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _expected_names(layers: int) -> list[str]:
    """`WhisperDenoiser`'s pretrained tensors for `layers` blocks (not [MASK]'s embedding)."""
    names = list(_HF_LEAF)
    for i in range(layers):
        for part in _HF_BLOCK:
            leaves = ["weight"] if part.endswith(".key") else ["weight", "bias"]
            names += [f"blocks.{i}.{part}.{leaf}" for leaf in leaves]
    return names


def _require(raw: dict, key: str, source: Path) -> torch.Tensor:
    if key not in raw:
        raise ValueError(f"{source}: Whisper decoder tensor {key} is missing")
    return raw[key]


def read_decoder_state(source: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """The decoder tensors of the Whisper weights at `source` (any format the encoder loads)
    under `WhisperDenoiser`'s names, and its head count.

    Raises:
        FileNotFoundError: no weights at `source`.
        ValueError: a format without decoder tensors (or one of them missing).
    """
    path = Path(source).expanduser()
    fmt = detect_format(path)
    if fmt == "huggingface":
        return _hf_state(path)
    if fmt == "ctranslate2":
        return _ct2_state(path if path.is_dir() else path.parent)
    return _openai_state(path)


def load_whisper_decoder(source: str | Path, prompt: WhisperPrompt) -> WhisperDenoiser:
    """A `WhisperDenoiser` holding the pretrained decoder at `source` (float32), [MASK]'s
    embedding initialised (`WhisperDenoiser.init_mask_embedding`)."""
    state, heads = read_decoder_state(source)
    if not any(k.startswith("blocks.0.") for k in state):
        raise ValueError(f"{source}: the Whisper weights have no decoder blocks")
    vocab, width = state["token_embedding.weight"].shape
    dims = WhisperDecoderDims(
        vocab_size=vocab,
        n_ctx=state["positional_embedding"].shape[0],
        width=width,
        heads=heads,
        layers=_count(state, r"blocks\.(\d+)\."),
        mlp_width=state["blocks.0.mlp.0.weight"].shape[0],
    )
    decoder = WhisperDenoiser(dims, prompt)
    missing, unexpected = decoder.load_state_dict(
        {k: v.float() for k, v in state.items()}, strict=False
    )
    if unexpected or set(missing) != {"mask_embed"}:
        raise ValueError(
            f"{source}: decoder tensors do not fit (missing {missing}, unexpected {unexpected})"
        )
    decoder.init_mask_embedding()
    return decoder


def build_whisper_decoder(
    cfg: DecoderConfig, tokenizer, encoder: FrozenWhisperEncoder, max_len: int
) -> WhisperDenoiser:
    """`model.decoder.kind: whisper`: the pretrained decoder of the encoder's own checkpoint.

    Raises:
        ValueError: the run's tokenizer is not Whisper's, the encoder does not give the last
            block's output (what Whisper's decoder was trained to read), the canvas is longer
            than Whisper's positions allow, or the config asks for the alignment prior (an
            extension of the paper's decoder only).
    """
    if not isinstance(tokenizer, WhisperTokenizer):
        raise ValueError(
            "model.decoder.kind whisper reads and writes Whisper's own token ids: the run needs "
            "the Whisper tokenizer (whisfusion.whisper_tokenizer), not a SentencePiece model"
        )
    if encoder.output_layer != 0:
        raise ValueError(
            "model.decoder.kind whisper: Whisper's decoder was trained on the encoder's last "
            f"block; set model.encoder.output_layer: 0 (got {encoder.output_layer})"
        )
    if cfg.align_hidden:
        raise ValueError(
            "model.decoder.align_hidden: the CTC alignment prior belongs to kind diffusion only"
        )
    decoder = load_whisper_decoder(encoder.source, tokenizer.prompt)
    if decoder.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"{encoder.source}: the decoder has {decoder.vocab_size} token rows, its tokenizer "
            f"{tokenizer.vocab_size} ids"
        )
    if max_len > decoder.max_canvas:
        raise ValueError(
            f"model.canvas.max_len {max_len} exceeds what Whisper's decoder "
            f"holds beside its 3 prompt tokens: set it to at most {decoder.max_canvas}"
        )
    return decoder
