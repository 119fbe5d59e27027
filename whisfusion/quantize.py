"""int8 weights for decoding on the CPU (`decode.int8`), as faster-whisper's `int8` compute type.

Each linear layer of a decoder copy keeps its weight as int8, one scale per output channel, and
quantizes its input per call (fbgemm's dynamic int8 matmul, which uses VNNI instructions where
the CPU has them): on a 2-core AVX512-VNNI EPYC, Whisper-base's 51,865 x 512 output layer runs
about 2x faster than in bf16 and 7x faster than in float32. Everything else (embeddings,
LayerNorms, attention over cached keys and values) stays in float32 or the autocast dtype.

The copy is made once per weight state (`int8_decoder`), for inference only: it has no
gradients, and the model keeps its float decoder for training and checkpoints.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn


class Int8Linear(nn.Module):
    """y = x W^T + b with W int8 per output channel and x quantized per call: (..., I) ->
    (..., O) float32. Not trainable."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        q = torch.quantize_per_channel(w, scale, zero, axis=0, dtype=torch.qint8)
        b = None if bias is None else bias.detach().float()
        self.out_features = w.shape[0]
        self._packed = torch.ops.quantized.linear_prepack(q, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float().contiguous()
        # reduce_range: 7-bit activations, which fbgemm's int16 accumulation needs on CPUs
        # without VNNI to avoid overflow (as torch's dynamic quantization sets it on x86)
        y = torch.ops.quantized.linear_dynamic(flat, self._packed, True)
        return y.view(*x.shape[:-1], self.out_features)


def uses_int8(int8: bool, device: torch.device) -> bool:
    """Whether `decode.int8` applies on `device`: the int8 kernels are the CPU's, a GPU
    decodes in `decode.dtype`."""
    return int8 and device.type == "cpu"


def quantize_linears(module: nn.Module) -> nn.Module:
    """`module` with every `nn.Linear` inside replaced by an `Int8Linear` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child.weight, child.bias))
        else:
            quantize_linears(child)
    return module


def _weights_version(module: nn.Module) -> tuple:
    # in-place updates (optimizer steps, EMA swaps, load_state_dict) bump a tensor's version
    return tuple((id(p), p._version) for p in module.parameters())


_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def int8_decoder(decoder: nn.Module) -> nn.Module:
    """An eval-mode copy of a CPU decoder with int8 linear layers (and its own int8 output
    layer where the decoder has one, `int8_output`), rebuilt when the decoder's weights change.

    Raises:
        ValueError: the decoder is not on the CPU (fbgemm's kernels are CPU-only).
    """
    device = next(decoder.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"decode.int8 runs on the CPU only; the decoder is on {device}")
    version = _weights_version(decoder)
    cached = _COPIES.get(decoder)
    if cached is not None and cached[0] == version:
        return cached[1]
    with torch.no_grad():
        quantized = quantize_linears(copy.deepcopy(decoder).eval().requires_grad_(False))
        if hasattr(quantized, "int8_output"):
            quantized.int8_output()
    _COPIES[decoder] = (version, quantized)
    return quantized
