"""Parallel Diffusion Decoding: the sampler and the choice among its K candidates."""

from whisfusion.pdd.sampler import PDDResult, canvas_for, options_from_config, pdd_decode
from whisfusion.pdd.select import Transcript, best_index, decode_result, select

__all__ = [
    "PDDResult",
    "Transcript",
    "best_index",
    "canvas_for",
    "decode_result",
    "options_from_config",
    "pdd_decode",
    "select",
]
