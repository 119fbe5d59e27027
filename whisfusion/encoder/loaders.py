"""Find Whisper encoder weights on disk, whatever the format, under `AudioEncoder`'s names.

Formats:
- Hugging Face model directory: `config.json` + `model.safetensors` (or shards listed in
  `model.safetensors.index.json`); `WhisperModel` (`encoder.*`) or
  `WhisperForConditionalGeneration` (`model.encoder.*`) key layout.
- openai-whisper checkpoint: a `.pt` file holding `{"dims": ..., "model_state_dict": ...}`.
- CTranslate2 directory (faster-whisper's format): `model.bin` (+ `config.json`), float weights.
Only encoder tensors are read; decoders stay on disk.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from whisfusion.encoder.ctranslate2 import read_encoder_variables
from whisfusion.encoder.model import AudioEncoder, EncoderDims

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
CT2_WEIGHTS = "model.bin"
# Output frames of a 30 s window, for formats that do not store the positional table.
DEFAULT_N_CTX = 1500
POSITIONS = "positional_embedding"


@dataclass
class LoadedWeights:
    # Shape of the encoder the tensors belong to.
    dims: EncoderDims
    # float32 CPU tensors under AudioEncoder's state_dict names.
    tensors: dict[str, torch.Tensor]
    # Files holding the weights, in the order they are hashed.
    files: list[Path]
    # "huggingface", "openai-whisper" or "ctranslate2".
    format: str


def detect_format(path: Path) -> str:
    """Return the weights format at `path`: "huggingface", "openai-whisper" or "ctranslate2"."""
    if not path.exists():
        raise FileNotFoundError(f"Whisper weights not found: {path}")
    if path.is_dir():
        if (path / CT2_WEIGHTS).is_file():
            return "ctranslate2"
        if (path / HF_CONFIG).is_file() and any(
            (path / n).is_file() for n in (HF_WEIGHTS, HF_INDEX)
        ):
            return "huggingface"
        found = sorted(p.name for p in path.iterdir())[:10]
        raise ValueError(
            f"{path}: not a Whisper model directory: expected {HF_CONFIG} with {HF_WEIGHTS} "
            f"(Hugging Face) or {CT2_WEIGHTS} (CTranslate2); found {found}"
        )
    with open(path, "rb") as f:
        magic = f.read(2)
    # torch.save writes a zip archive ("PK"); older torch wrote a pickle (protocol byte 0x80).
    if magic == b"PK" or magic[:1] == b"\x80":
        return "openai-whisper"
    if path.name == CT2_WEIGHTS:
        return "ctranslate2"
    raise ValueError(
        f"{path}: unrecognised weights file: expected an openai-whisper .pt checkpoint, "
        "a Hugging Face model directory or a CTranslate2 model directory"
    )


def load_weights(path: str | Path) -> LoadedWeights:
    """Read the encoder weights at `path` (any supported format) as float32 on CPU.

    Raises an error naming the file and the tensor when a tensor is missing or has the wrong
    shape for the dimensions the file declares.
    """
    path = Path(path).expanduser()
    fmt = detect_format(path)
    if fmt == "huggingface":
        return _load_huggingface(path)
    if fmt == "openai-whisper":
        return _load_openai(path)
    return _load_ctranslate2(path if path.is_dir() else path.parent)


def sha256_of_files(files: list[Path]) -> str:
    """Hex sha256 of the files' bytes in order (for one file: what `sha256sum` prints)."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _collect(
    dims: EncoderDims,
    source: Path,
    fetch: Callable[[str], tuple[str, torch.Tensor | None]],
) -> dict[str, torch.Tensor]:
    """Fetch every tensor AudioEncoder(dims) expects and check its shape.

    `fetch(name)` returns (name in the source, tensor or None when absent). Only the positional
    table may be absent: it is the fixed sinusoid, rebuilt when a format leaves it out.
    """
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = {k: v.shape for k, v in AudioEncoder(dims).state_dict().items()}
    tensors = {}
    for name, shape in expected.items():
        source_name, tensor = fetch(name)
        if tensor is None:
            if name == POSITIONS:
                continue
            raise ValueError(f"{source}: missing tensor {source_name}")
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(
                f"{source}: tensor {source_name} has shape {list(tensor.shape)}, "
                f"expected {list(shape)} for an encoder of {dims}"
            )
        tensors[name] = tensor.to(torch.float32)
    return tensors


def _count_blocks(names, pattern: str, source: Path) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(pattern, n))}
    if found != set(range(len(found))):
        raise ValueError(f"{source}: encoder blocks are not numbered 0..N-1: {sorted(found)}")
    return len(found)


def _check_block_count(declared: int, names, pattern: str, source: Path) -> None:
    present = _count_blocks(names, pattern, source)
    if present != declared:
        raise ValueError(f"{source}: declares {declared} encoder blocks but holds {present}")


# AudioEncoder name -> Hugging Face WhisperEncoder name (after the encoder prefix).
_HF_RENAMES = [
    (r"^positional_embedding$", "embed_positions.weight"),
    (r"^blocks\.(\d+)\.attn\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"^blocks\.(\d+)\.attn\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"^blocks\.(\d+)\.attn\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"^blocks\.(\d+)\.attn\.out\.", r"layers.\1.self_attn.out_proj."),
    (r"^blocks\.(\d+)\.attn_ln\.", r"layers.\1.self_attn_layer_norm."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"layers.\1.fc1."),
    (r"^blocks\.(\d+)\.mlp\.2\.", r"layers.\1.fc2."),
    (r"^blocks\.(\d+)\.mlp_ln\.", r"layers.\1.final_layer_norm."),
    (r"^ln_post\.", "layer_norm."),
]


def _hf_name(name: str) -> str:
    for pattern, replacement in _HF_RENAMES:
        name, hits = re.subn(pattern, replacement, name)
        if hits:
            break
    return name


def _load_huggingface(directory: Path) -> LoadedWeights:
    config_path = directory / HF_CONFIG
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: cannot read the model config: {err}") from err
    if config.get("model_type") != "whisper":
        raise ValueError(
            f"{config_path}: model_type is {config.get('model_type')!r}, not 'whisper'"
        )
    if config.get("activation_function", "gelu") != "gelu":
        raise ValueError(
            f"{config_path}: activation_function {config['activation_function']!r} is not "
            "Whisper's exact gelu"
        )
    try:
        dims = EncoderDims(
            n_mels=config["num_mel_bins"],
            n_ctx=config["max_source_positions"],
            width=config["d_model"],
            heads=config["encoder_attention_heads"],
            layers=config["encoder_layers"],
            mlp_width=config["encoder_ffn_dim"],
        )
    except KeyError as err:
        raise ValueError(f"{config_path}: missing Whisper config key {err}") from err

    if (directory / HF_WEIGHTS).is_file():
        files = [directory / HF_WEIGHTS]
    else:
        index_path = directory / HF_INDEX
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{index_path}: cannot read the shard index: {err}") from err
        files = [directory / name for name in sorted(set(weight_map.values()))]

    key_file: dict[str, Path] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                key_file.update((key, file) for key in f.keys())
        except (OSError, SafetensorError) as err:
            raise ValueError(f"{file}: cannot read safetensors file: {err}") from err
    prefix = (
        "model.encoder." if any(k.startswith("model.encoder.") for k in key_file) else "encoder."
    )
    _check_block_count(dims.layers, key_file, re.escape(prefix) + r"layers\.(\d+)\.", directory)

    def fetch(name: str) -> tuple[str, torch.Tensor | None]:
        key = prefix + _hf_name(name)
        if key not in key_file:
            return key, None
        with safe_open(key_file[key], framework="pt") as f:
            return key, f.get_tensor(key)

    return LoadedWeights(dims, _collect(dims, directory, fetch), files, "huggingface")


def _load_openai(path: Path) -> LoadedWeights:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise ValueError(f"{path}: cannot read openai-whisper checkpoint: {err}") from err
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        raise ValueError(
            f"{path}: not an openai-whisper checkpoint (expected a dict with 'dims' and "
            "'model_state_dict')"
        )
    raw_dims, state = checkpoint["dims"], checkpoint["model_state_dict"]
    try:
        dims = EncoderDims(
            n_mels=raw_dims["n_mels"],
            n_ctx=raw_dims["n_audio_ctx"],
            width=raw_dims["n_audio_state"],
            heads=raw_dims["n_audio_head"],
            layers=raw_dims["n_audio_layer"],
            mlp_width=4 * raw_dims["n_audio_state"],
        )
    except KeyError as err:
        raise ValueError(f"{path}: dims lacks {err}") from err
    _check_block_count(dims.layers, state, r"encoder\.blocks\.(\d+)\.", path)

    def fetch(name: str) -> tuple[str, torch.Tensor | None]:
        key = "encoder." + name
        return key, state.get(key)

    return LoadedWeights(dims, _collect(dims, path, fetch), [path], "openai-whisper")


def _ct2_name(name: str) -> str:
    """AudioEncoder name -> CTranslate2 variable name (q, k, v map to the fused linear_0)."""
    if name == POSITIONS:
        return "encoder/position_encodings/encodings"
    parts = name.split(".")
    leaf = parts[-1]
    norm_leaf = {"weight": "gamma", "bias": "beta"}[leaf]
    if parts[0] in ("conv1", "conv2"):
        return f"encoder/{parts[0]}/{leaf}"
    if parts[0] == "ln_post":
        return f"encoder/layer_norm/{norm_leaf}"
    block = f"encoder/layer_{parts[1]}"
    sub = ".".join(parts[2:-1])
    return {
        "attn_ln": f"{block}/self_attention/layer_norm/{norm_leaf}",
        "attn.query": f"{block}/self_attention/linear_0/{leaf}",
        "attn.key": f"{block}/self_attention/linear_0/{leaf}",
        "attn.value": f"{block}/self_attention/linear_0/{leaf}",
        "attn.out": f"{block}/self_attention/linear_1/{leaf}",
        "mlp_ln": f"{block}/ffn/layer_norm/{norm_leaf}",
        "mlp.0": f"{block}/ffn/linear_0/{leaf}",
        "mlp.2": f"{block}/ffn/linear_1/{leaf}",
    }[sub]


def _load_ctranslate2(directory: Path) -> LoadedWeights:
    model_bin = directory / CT2_WEIGHTS
    variables = read_encoder_variables(model_bin)
    for required in (
        "encoder/conv1/weight",
        "encoder/num_heads",
        "encoder/layer_0/ffn/linear_0/weight",
    ):
        if required not in variables:
            raise ValueError(f"{model_bin}: missing variable {required}")
    conv1 = variables["encoder/conv1/weight"]
    if conv1.ndim != 3:
        raise ValueError(
            f"{model_bin}: encoder/conv1/weight has shape {list(conv1.shape)}, not 3-D"
        )
    width, n_mels, _ = conv1.shape
    positions = variables.get("encoder/position_encodings/encodings")
    dims = EncoderDims(
        n_mels=n_mels,
        n_ctx=DEFAULT_N_CTX if positions is None else positions.shape[0],
        width=width,
        heads=int(variables["encoder/num_heads"]),
        layers=_count_blocks(variables, r"encoder/layer_(\d+)/", model_bin),
        mlp_width=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
    )

    def fetch(name: str) -> tuple[str, torch.Tensor | None]:
        key = _ct2_name(name)
        tensor = variables.get(key)
        projection = name.split(".")[-2] if "." in name else ""
        if tensor is None or projection not in ("query", "key", "value"):
            return key, tensor
        # Rows of the fused projection are [query; key; value]; the key's bias rows are zero.
        if tensor.shape[0] != 3 * width:
            raise ValueError(
                f"{model_bin}: tensor {key} has shape {list(tensor.shape)}, "
                f"expected first dimension {3 * width} (fused query, key, value)"
            )
        return key, tensor.chunk(3)[("query", "key", "value").index(projection)]

    return LoadedWeights(dims, _collect(dims, model_bin, fetch), [model_bin], "ctranslate2")
