"""The frozen Whisper encoder: architecture, weight loading from every common format, windows.

encoder = FrozenWhisperEncoder.from_pretrained("path/to/whisper-large-v3", window="trim")
features, valid = encoder.encode(audio, lengths)  # (B, T, 1280), (B, T)
"""

from whisfusion.encoder.build import build_encoder
from whisfusion.encoder.frozen import FrozenWhisperEncoder
from whisfusion.encoder.loaders import LoadedWeights, detect_format, load_weights
from whisfusion.encoder.model import AudioEncoder, EncoderDims

__all__ = [
    "AudioEncoder",
    "EncoderDims",
    "FrozenWhisperEncoder",
    "LoadedWeights",
    "build_encoder",
    "detect_format",
    "load_weights",
]
