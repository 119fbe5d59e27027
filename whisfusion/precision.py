"""The precision decoding runs in (`decode.dtype`), applied by one context manager.

    with decoding_precision(cfg.decode.dtype, device) as dtype:
        features, valid = model.encode(audio, lengths, dtype)
        transcripts = model.decode_features(features, valid, durations)

"auto" is bfloat16 autocast on CUDA and float32 on the CPU, where bf16 is fast only on CPUs with
bf16 instructions (AVX512-BF16, AMX): on an AVX512-BF16 EPYC the demo model decodes about twice
as fast in bf16 (`configs/demo_whisper.yaml` sets it), elsewhere it would be emulated. The
encoder runs in the same precision at inference (`FrozenWhisperEncoder.encode(dtype=)`).
Autocast keeps each weight's cast for the whole `with` block only outside
`torch.inference_mode()` (it caches casts of leaf tensors that require grad), so decoding runs
under `torch.no_grad()`: under inference mode every step would cast every weight again (and
frozen weights are marked as requiring grad while decoding runs: `kept_casts`). What
stays float32 on CUDA (weights outside autocast, float32 "dtype") runs its matmuls in TF32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from whisfusion.config.decode import DECODE_DTYPES


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The torch dtype `decode.dtype` means on `device` ("auto": bf16 on CUDA, else float32)."""
    if name not in DECODE_DTYPES:
        raise ValueError(f"decode.dtype must be one of {', '.join(DECODE_DTYPES)}; got '{name}'")
    device = torch.device(device)
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


@contextlib.contextmanager
def decoding_precision(name: str, device: torch.device | str) -> Iterator[torch.dtype]:
    """Autocast to `decode.dtype` on `device` (nothing for float32) and, on CUDA, TF32 matmuls
    for what stays float32; the previous settings come back on exit. Yields the dtype."""
    device = torch.device(device)
    dtype = resolve_dtype(name, device)
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context(_tf32())
        if dtype != torch.float32:
            stack.enter_context(torch.autocast(device.type, dtype=dtype))
        yield dtype


@contextlib.contextmanager
def kept_casts(module: nn.Module) -> Iterator[None]:
    """Autocast keeps its casts of `module`'s frozen weights for its whole region, as it does
    for trained ones; use under `torch.no_grad()`.

    Autocast caches the cast of a leaf tensor only when it requires grad, so a frozen weight
    (`model.decoder.freeze`: Whisper's 51,865-token output layer in the demo) would be cast
    again at every denoising step. Inside, the frozen floating-point parameters are marked as
    requiring grad; with grad mode off nothing records a graph, and the marks go on exit.

    Raises:
        RuntimeError: grad mode is on (a backward pass would then train the frozen weights).
    """
    if torch.is_grad_enabled():
        raise RuntimeError("kept_casts marks frozen weights as trainable: call it under no_grad")
    frozen = [p for p in module.parameters() if p.is_floating_point() and not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(False)


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
