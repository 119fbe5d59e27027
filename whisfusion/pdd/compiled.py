"""The per-step denoiser call, optionally compiled (`decode.compile`).

On CUDA the decoder is compiled with mode "reduce-overhead", which captures each step's kernels
in a CUDA graph and replays it: at batch 1 the T-step loop is bound by kernel launches, not by
arithmetic. Each distinct input shape is compiled (and captured) once, which is why compiled
decoding pads canvases to a few widths (`decode.canvas_buckets`) and encoder frames to
multiples of `FRAME_MULTIPLE`. On the CPU the default mode fuses elementwise work only.

A captured graph's output buffer is reused by its next replay: the sampler reads each step's
logits before it calls the denoiser again, which is all this needs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

# Encoder frames are cut to a multiple of this when compiling (2 s of 50 Hz frames): few
# shapes to compile, at most 2 s of padded frames attended to.
FRAME_MULTIPLE = 100

_COMPILED: weakref.WeakKeyDictionary[nn.Module, Callable] = weakref.WeakKeyDictionary()


def denoiser(decoder: nn.Module, compile: bool) -> Callable:
    """`decoder` itself, or its compiled form (built once per decoder and kept with it)."""
    if not compile:
        return decoder
    fn = _COMPILED.get(decoder)
    if fn is None:
        cuda = next(decoder.parameters()).device.type == "cuda"
        fn = torch.compile(decoder, mode="reduce-overhead" if cuda else "default")
        _COMPILED[decoder] = fn
    return fn
