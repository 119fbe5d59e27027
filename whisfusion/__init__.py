"""whisfusion: masked-diffusion ASR on a frozen Whisper encoder, decoded in parallel (PDD)."""

from whisfusion.audio import load_audio, log_mel_spectrogram
from whisfusion.decoder import DiffusionDecoder
from whisfusion.denoiser import Denoiser
from whisfusion.encoder import FrozenWhisperEncoder
from whisfusion.model import Whisfusion
from whisfusion.options import DecodeOptions
from whisfusion.schedule import MaskSchedule
from whisfusion.tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "DecodeOptions",
    "Denoiser",
    "DiffusionDecoder",
    "FrozenWhisperEncoder",
    "MaskSchedule",
    "Tokenizer",
    "Whisfusion",
    "__version__",
    "load_audio",
    "log_mel_spectrogram",
]
