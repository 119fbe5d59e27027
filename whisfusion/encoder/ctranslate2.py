"""Read the Whisper encoder out of a CTranslate2 `model.bin`, without the ctranslate2 package.

The file (CTranslate2's `ModelSpec._serialize`, binary versions 4-6), all little-endian:

    uint32 binary_version, string spec_name, uint32 spec_revision
    uint32 n_variables, then per variable:
        string name, uint8 rank, uint32 dims[rank], uint8 dtype_id, uint32 n_bytes, bytes data
    uint32 n_aliases, then per alias: string alias, string target_name

where `string` is a uint16 length (counting a trailing NUL) followed by UTF-8 bytes and the NUL.
dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. A variable equal to an
earlier one (in name order) is stored once and the later name becomes an alias.

Whisper variables of the encoder (WhisperSpec): `encoder/conv{1,2}/{weight,bias}`,
`encoder/position_encodings/encodings`, `encoder/num_heads` (int16 scalar), `encoder/layer_norm/
{gamma,beta}` and per block `encoder/layer_N/self_attention/{layer_norm/{gamma,beta},
linear_0/{weight,bias}, linear_1/{weight,bias}}`, `encoder/layer_N/ffn/{layer_norm/...,
linear_0/..., linear_1/...}`. `self_attention/linear_0` is the fused [query; key; value]
projection whose key rows carry a zero bias.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

_DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
_SUPPORTED_VERSIONS = (4, 5, 6)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class _Entry:
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    n_bytes: int


class CT2FormatError(ValueError):
    """A model.bin that is not a readable CTranslate2 Whisper model."""


class _Reader:
    def __init__(self, stream: BinaryIO, path: Path):
        self.stream = stream
        self.path = path

    def read(self, n: int) -> bytes:
        position = self.stream.tell()
        data = self.stream.read(n)
        if len(data) != n:
            raise CT2FormatError(
                f"{self.path}: truncated: wanted {n} bytes at offset {position}, got {len(data)}"
            )
        return data

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = self.read(length)
        if not raw or raw[-1] != 0:
            raise CT2FormatError(f"{self.path}: malformed string at offset {self.stream.tell()}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise CT2FormatError(f"{self.path}: malformed string: {err}") from err


def _index(reader: _Reader) -> tuple[dict[str, _Entry], dict[str, str]]:
    """Walk the file once, recording where each variable's bytes are, and read the aliases."""
    (version,) = reader.unpack("I")
    if version not in _SUPPORTED_VERSIONS:
        raise CT2FormatError(
            f"{reader.path}: not a CTranslate2 model.bin this reader understands "
            f"(binary version {version}, supported {_SUPPORTED_VERSIONS})"
        )
    spec = reader.string()
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{reader.path}: a CTranslate2 {spec!r} model, not a Whisper model")
    reader.unpack("I")  # spec revision: the encoder's layout is the same in every revision
    (count,) = reader.unpack("I")
    entries: dict[str, _Entry] = {}
    for _ in range(count):
        name = reader.string()
        (rank,) = reader.unpack("B")
        shape = reader.unpack(f"{rank}I") if rank else ()
        dtype_id, n_bytes = reader.unpack("BI")
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"{reader.path}: variable {name} has unknown dtype id {dtype_id}")
        entries[name] = _Entry(tuple(shape), _DTYPES[dtype_id], reader.stream.tell(), n_bytes)
        reader.stream.seek(n_bytes, 1)
    aliases: dict[str, str] = {}
    (n_aliases,) = reader.unpack("I")
    for _ in range(n_aliases):
        alias = reader.string()
        aliases[alias] = reader.string()
    return entries, aliases


def read_encoder_variables(model_bin: Path, prefix: str = "encoder/") -> dict[str, torch.Tensor]:
    """Return every variable under `prefix` (`encoder/`, or `decoder/` for the decoder) of a
    CTranslate2 Whisper model.bin, aliases resolved.

    Float variables keep their stored dtype (float32, float16 or bfloat16); scalars are 0-d.
    Raises `CT2FormatError` for a truncated or foreign file and for quantized (int8/int16)
    weights, which cannot be turned back into the published float weights exactly.
    """
    with open(model_bin, "rb") as stream:
        reader = _Reader(stream, model_bin)
        entries, aliases = _index(reader)
        names = sorted({n for n in list(entries) + list(aliases) if n.startswith(prefix)})
        variables = {}
        for name in names:
            target = aliases.get(name, name)
            if target not in entries:
                raise CT2FormatError(f"{model_bin}: alias {name} points to missing {target}")
            entry = entries[target]
            if entry.shape and entry.dtype not in _FLOAT_DTYPES:
                raise CT2FormatError(
                    f"{model_bin}: variable {name} is quantized to {str(entry.dtype)[6:]}; "
                    "whisfusion needs float weights: re-convert the model with "
                    "`ct2-transformers-converter --quantization float16` (or float32)"
                )
            stream.seek(entry.offset)
            raw = bytearray(reader.read(entry.n_bytes))
            tensor = torch.frombuffer(raw, dtype=entry.dtype) if raw else torch.empty(0)
            expected = 1
            for dim in entry.shape:
                expected *= dim
            if tensor.numel() != expected:
                raise CT2FormatError(
                    f"{model_bin}: variable {name} declares shape {list(entry.shape)} "
                    f"but holds {tensor.numel()} values"
                )
            variables[name] = tensor.reshape(entry.shape)
    return variables
