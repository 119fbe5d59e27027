"""The frozen Whisper encoder as the rest of whisfusion sees it: audio in, features out.

Frozen means: no parameter requires grad, the module stays in eval mode whatever `train()` is
asked, and its tensors stay out of a parent module's `state_dict()` (a training checkpoint
records `source` and `sha256` instead, and the weights come from the source on every load).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from whisfusion.audio import N_SAMPLES_PER_TOKEN, log_mel_spectrogram, pad_or_trim
from whisfusion.encoder.loaders import DEFAULT_N_CTX, POSITIONS, load_weights, sha256_of_files
from whisfusion.encoder.model import AudioEncoder, EncoderDims, sinusoids
from whisfusion.encoder.windows import (
    WINDOWS,
    frame_mask,
    trim_multiple_samples,
    valid_frames,
    window_samples,
)
from whisfusion.precision import resolve_dtype

if TYPE_CHECKING:
    from whisfusion.config import EncoderConfig


class FrozenWhisperEncoder(nn.Module):
    """A Whisper encoder with fixed weights, turning 16 kHz audio into (B, T, width) features.

    Windows (`window`):
    - "full": every clip is zero-padded (or cut) to 30 s, as Whisper was trained; T = 1500.
      `encode` still returns the mask of frames that cover real audio, so the decoder can
      ignore the padding.
    - "trim": each clip gets its own window, its duration rounded up to `trim_multiple_s`
      (at most 30 s); clips with the same window are encoded together, the outputs are
      right-padded to the batch's longest window, and `valid` marks each clip's own frames.
      A clip's features then never depend on its batch neighbours: they are cacheable and
      batch-invariant, and training and inference see the same features for the same audio.
      Shorter windows use the first T rows of the sinusoidal positional table.

    Layer (`output_layer`): 0 reads the last block, as Whisper's own decoder does; k >= 1 reads
    block k and never runs the blocks after it (see `AudioEncoder.forward`).

    Frozen, whatever module holds it:
    - never trained: no parameter requires grad, so no optimizer built from `parameters()` with
      requires_grad (and none built from the decoder's) ever sees one;
    - always in eval mode: `train()` is refused (dropout and friends never switch on);
    - never in a parent's checkpoint: `_stay_out_of_parent_state_dicts` drops its tensors from
      any parent module's `state_dict()` and ignores them in a parent's `load_state_dict()`
      (a checkpoint records `source` and `sha256` instead; the weights come from the source on
      every load). Its own `state_dict()` keeps them.

    Build with `from_pretrained` (real weights), `random` (a seeded stand-in for tests and
    CPU runs) or `from_config`.
    """

    def __init__(
        self,
        model: AudioEncoder,
        source: str,
        sha256: str,
        window: str = "full",
        trim_multiple_s: float = 2.0,
        output_layer: int = 0,
    ):
        super().__init__()
        if window not in WINDOWS:
            raise ValueError(f"encoder window must be one of {WINDOWS}, got {window!r}")
        if not 0 <= output_layer <= model.dims.layers:
            raise ValueError(
                f"encoder output_layer must be in [0, {model.dims.layers}] for {source} "
                f"({model.dims.layers} blocks), got {output_layer}"
            )
        self._trim_samples = trim_multiple_samples(trim_multiple_s)
        self._output_layer = output_layer
        self.model = model
        self._source = source
        self._sha256 = sha256
        self._window = window
        self.requires_grad_(False)
        super().train(False)
        self._stay_out_of_parent_state_dicts()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        window: str = "full",
        trim_multiple_s: float = 2.0,
        output_layer: int = 0,
    ) -> FrozenWhisperEncoder:
        """Load published weights: a Hugging Face dir, an openai-whisper .pt or a CTranslate2 dir.

        Weights are float32 on CPU; `sha256` is the hash of the weights file(s) as on disk.
        """
        weights = load_weights(path)
        dims = weights.dims
        tensors = dict(weights.tensors)
        # Only the positional table may be left out by a format: it is the fixed sinusoid.
        tensors.setdefault(POSITIONS, sinusoids(dims.n_ctx, dims.width))
        model = _empty_encoder(dims)
        model.load_state_dict(tensors, strict=True, assign=True)
        sha256 = sha256_of_files(weights.files)
        return cls(model, str(path), sha256, window, trim_multiple_s, output_layer)

    @classmethod
    def random(
        cls,
        n_mels: int = 80,
        width: int = 64,
        layers: int = 2,
        heads: int = 2,
        seed: int = 0,
        window: str = "full",
        trim_multiple_s: float = 2.0,
        output_layer: int = 0,
    ) -> FrozenWhisperEncoder:
        """A randomly initialised encoder, identical for the same arguments on every rank and run.

        Draws from its own generator (the global RNG is untouched): linear and conv weights
        ~ N(0, 1 / fan_in), biases 0, LayerNorm gains 1.
        """
        dims = EncoderDims(n_mels, DEFAULT_N_CTX, width, heads, layers, 4 * width)
        model = _empty_encoder(dims).to_empty(device="cpu")
        model.positional_embedding.copy_(sinusoids(dims.n_ctx, dims.width))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
                elif param.ndim == 1:
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, param[0].numel() ** -0.5, generator=generator)
        source = f"random:{seed}:n_mels={n_mels},width={width},layers={layers},heads={heads}"
        sha256 = hashlib.sha256(source.encode()).hexdigest()
        return cls(model, source, sha256, window, trim_multiple_s, output_layer)

    @classmethod
    def from_config(cls, cfg: EncoderConfig) -> FrozenWhisperEncoder:
        """Build from `EncoderConfig`: `source` is "random" or a weights path.

        When `cfg.sha256` is set, the weights' hash must equal it.
        """
        if cfg.source == "random":
            encoder = cls.random(
                cfg.n_mels,
                cfg.width,
                cfg.layers,
                cfg.heads,
                cfg.seed,
                cfg.window,
                cfg.trim_multiple_s,
                cfg.output_layer,
            )
        else:
            encoder = cls.from_pretrained(
                cfg.source, cfg.window, cfg.trim_multiple_s, cfg.output_layer
            )
        if cfg.sha256 and cfg.sha256.lower() != encoder.sha256:
            raise ValueError(
                f"encoder weights {encoder.source} have sha256 {encoder.sha256}, "
                f"but the config expects {cfg.sha256}: not the weights this run was set up with"
            )
        return encoder

    @property
    def dims(self) -> EncoderDims:
        return self.model.dims

    @property
    def n_mels(self) -> int:
        return self.model.dims.n_mels

    @property
    def width(self) -> int:
        return self.model.dims.width

    @property
    def n_ctx(self) -> int:
        return self.model.dims.n_ctx

    @property
    def source(self) -> str:
        return self._source

    @property
    def sha256(self) -> str:
        return self._sha256

    @property
    def window(self) -> str:
        return self._window

    @property
    def output_layer(self) -> int:
        return self._output_layer

    def feature_key(self, dtype: torch.dtype) -> str:
        """sha256 of everything that decides the features of a clip: the weights, the window
        rule, the layer read and the precision `encode` runs in. Cached features are filed
        under it."""
        spec = f"{self.sha256}:{self.window}:{self._trim_samples}:{self.output_layer}:{dtype}"
        return hashlib.sha256(spec.encode()).hexdigest()

    def _stay_out_of_parent_state_dicts(self) -> None:
        """Keep the weights out of any parent module's checkpoint (class docstring).

        PyTorch's state-dict hooks see the key prefix under which a parent saves or loads this
        module; an empty prefix is the encoder's own `state_dict()`, which is left alone.
        """
        self._load_prefix = ""
        self.register_state_dict_post_hook(_drop_from_parent_state_dict)
        self.register_load_state_dict_pre_hook(_ignore_in_parent_state_dict)
        self.register_load_state_dict_post_hook(_forgive_missing_keys)

    def train(self, mode: bool = True) -> FrozenWhisperEncoder:
        """Stay in eval mode: the encoder is used exactly as it was published."""
        return super().train(False)

    def extra_repr(self) -> str:
        return (
            f"source={self.source!r}, sha256={self.sha256[:12]}, window={self.window!r}, "
            f"output_layer={self.output_layer}"
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, n_mels, frames), frames even, at most 2 * n_ctx -> (B, frames // 2, width)."""
        if mel.ndim != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(
                f"mel must have shape (B, {self.n_mels}, frames) for encoder {self.source}, "
                f"got {tuple(mel.shape)}"
            )
        frames = mel.shape[2]
        if frames % 2 or not 0 < frames <= 2 * self.n_ctx:
            raise ValueError(f"mel frames must be even and in [2, {2 * self.n_ctx}], got {frames}")
        # A model cast to bf16 (e.g. Lightning's bf16-true) still takes the float32 log-mel.
        return self.model(mel.to(self.model.conv1.weight.dtype), self.output_layer)

    @torch.no_grad()
    def encode(
        self, audio: torch.Tensor, lengths: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel and encoder for a batch of clips.

        Args:
            audio: shape (B, S), float 16 kHz waveforms, right-padded.
            lengths: shape (B,), samples of real audio in each row.
            dtype: the precision the encoder runs in: the model's `decode.dtype`, resolved,
                in training, validation and inference alike; None = what "auto" means on the
                encoder's device (`whisfusion.precision.resolve_dtype`).

        Returns:
            features: shape (B, T, width), float32; zeros past each clip's window.
            valid: shape (B, T), bool; True on frames that cover real audio
                (ceil(length / 320) of them). T is 1500 for window="full", the longest
                clip's window / 320 for window="trim".

        The encoder sets its precision itself, whatever autocast the caller runs under
        (Lightning's bf16-mixed included), so features of the same audio are the same wherever
        they are computed in one precision; cached features are filed by it (`feature_key`).
        The log-mel stays float32 in every case.
        """
        if audio.ndim != 2 or lengths.shape != (audio.shape[0],):
            raise ValueError(
                f"audio must be (B, S) and lengths (B,), got {tuple(audio.shape)} and "
                f"{tuple(lengths.shape)}"
            )
        if len(lengths) and (lengths.min() < 0 or lengths.max() > audio.shape[1]):
            raise ValueError(
                f"lengths must lie in [0, {audio.shape[1]}] (audio samples), got {lengths.tolist()}"
            )
        device = self.model.conv1.weight.device
        if dtype is None:
            dtype = resolve_dtype("auto", device)
        # The window plan (shapes) is made where the caller keeps `lengths`: from host lengths
        # it never waits for the device.
        windows = window_samples(lengths.long(), self.window, self._trim_samples)
        frames = int(windows.max()) // N_SAMPLES_PER_TOKEN if len(windows) else 0
        audio = audio.to(device=device, dtype=torch.float32)
        lengths = lengths.to(device=device, dtype=torch.long)
        # Whatever follows a clip in its row must not reach its features.
        audio = audio * frame_mask(lengths, audio.shape[1])
        features = torch.zeros(len(audio), frames, self.width, device=device)
        for window in windows.unique().tolist():
            rows = (windows == window).nonzero().squeeze(1).to(device)
            with torch.autocast(device.type, enabled=False):
                mel = log_mel_spectrogram(pad_or_trim(audio[rows], window), self.n_mels)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                encoded = self(mel)
            features[rows, : encoded.shape[1]] = encoded.float()
        return features, frame_mask(valid_frames(lengths, windows.to(device)), frames)


def _empty_encoder(dims: EncoderDims) -> AudioEncoder:
    """An AudioEncoder without storage: every tensor is about to be overwritten, so the default
    initialisation (seconds for large sizes, and a draw from the global RNG) is skipped."""
    with torch.device("meta"):
        return AudioEncoder(dims)


def _drop_from_parent_state_dict(module, state_dict, prefix, local_metadata) -> None:
    """Keep the encoder's tensors out of a parent's state_dict (its own state_dict keeps them)."""
    if not prefix:
        return
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k == prefix[:-1] or k.startswith(prefix)]:
            del metadata[key]


def _ignore_in_parent_state_dict(module, state_dict, prefix, *args) -> None:
    """Loading a parent: the encoder's weights come from its source, never from the checkpoint."""
    module._load_prefix = prefix
    if prefix:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[key]


def _forgive_missing_keys(module, incompatible_keys) -> None:
    """A parent's checkpoint lacks the encoder's keys by design: do not report them missing."""
    prefix = module._load_prefix
    if prefix:
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if not k.startswith(prefix)]
