"""What each benchmark profile times: decoder shapes, grids of lengths / steps / candidates.

cpu  the demo setting: `tiny` and `demo` diffusion decoders on the Whisper-base encoder (width
     512) against Whisper-base's own autoregressive decoder, float32; and a diffusion decoder
     of Whisper-base's decoder size, to compare the methods at equal size.
gpu  the paper setting: the `large` diffusion decoder on the Whisper-large-v3 encoder (width
     1280) against the large-v3 and large-v3-turbo autoregressive decoders, bf16 autocast.

Diffusion decoder shapes and vocabularies are read from `configs/<size>.yaml`, so the benchmark
times exactly what those configs train.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from whisfusion.config import DecodeConfig, DecoderConfig, load_config
from whisfusion.precision import resolve_dtype

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class EncoderShape:
    # Name of the Whisper model whose encoder this is.
    name: str
    # Mel bins of its log-mel input.
    n_mels: int
    # Residual width = the width of the features every decoder attends to.
    width: int
    # Transformer blocks.
    layers: int
    # Attention heads.
    heads: int


@dataclass(frozen=True)
class ARShape:
    """Whisper's autoregressive decoder (Hugging Face `WhisperForConditionalGeneration`)."""

    # Name of the Whisper model whose decoder this is.
    name: str
    # Residual width d_model.
    width: int
    # Decoder blocks.
    layers: int
    # Attention heads.
    heads: int
    # MLP hidden size.
    ffn: int
    # Output vocabulary.
    vocab: int
    # Mel bins of the matching encoder (part of the model config; the encoder is not run).
    n_mels: int


@dataclass(frozen=True)
class PDDShape:
    """A whisfusion diffusion decoder: the decoder section and vocabulary of a config file."""

    name: str
    decoder: DecoderConfig
    vocab: int


WHISPER_BASE_ENCODER = EncoderShape("whisper-base", n_mels=80, width=512, layers=6, heads=8)
WHISPER_LARGE_V3_ENCODER = EncoderShape("whisper-large-v3", 128, 1280, 32, 20)

AR_SHAPES = {
    "whisper-base": ARShape("whisper-base", 512, 6, 8, 2048, 51865, 80),
    "whisper-large-v3": ARShape("whisper-large-v3", 1280, 32, 20, 5120, 51866, 128),
    # turbo keeps large-v3's encoder and prunes the decoder to 4 blocks
    "whisper-large-v3-turbo": ARShape("whisper-large-v3-turbo", 1280, 4, 20, 5120, 51866, 128),
}


def pdd_shape(size: str) -> PDDShape:
    """The diffusion decoder of `configs/<size>.yaml`."""
    path = CONFIGS / f"{size}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config {path} for diffusion decoder size '{size}'")
    cfg = load_config(path)
    return PDDShape(size, cfg.model.decoder, cfg.model.tokenizer.vocab_size)


# The demo decoder grown to Whisper-base's decoder shape and vocabulary: with it the comparison
# measures the decoding method alone, at equal model size (SwiGLU 3 x 512 x 1344 holds as many
# weights as Whisper's GELU 2 x 512 x 2048).
BASE_SIZED = PDDShape("base-sized", DecoderConfig(layers=6, width=512, heads=8), vocab=51865)

# (batch, T, K): one diffusion decoder setting, timed at every transcript length.
Setting = tuple[int, int, int]


def grid(
    batches: Sequence[int], steps: Sequence[int], candidates: Sequence[int]
) -> tuple[Setting, ...]:
    """Every (batch, T, K) combination."""
    return tuple(itertools.product(batches, steps, candidates))


def replace_in_settings(
    settings: Sequence[Setting],
    batches: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    candidates: Sequence[int] | None = None,
) -> tuple[Setting, ...]:
    """The settings with each given dimension's values replaced by the given ones (the other
    dimensions keep their structure); duplicates dropped, order kept."""
    out = [
        combo
        for b, t, k in settings
        for combo in itertools.product(batches or (b,), steps or (t,), candidates or (k,))
    ]
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class PDDRun:
    """A diffusion decoder and the settings it is timed at."""

    shape: PDDShape
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class Profile:
    # "cpu" or "gpu": names the outputs and the summary.
    name: str
    # Where every model runs.
    device: str
    # Autocast dtype (a torch dtype name) of every model timed; None = float32 throughout.
    # The profiles take what `decode.dtype`'s default means on their device.
    autocast: str | None
    # The encoder whose output all decoders share.
    encoder: EncoderShape
    # Diffusion decoders timed, each with its own (batch, T, K) settings.
    pdd: tuple[PDDRun, ...]
    # The diffusion decoder size a default (T, K) is recommended for.
    recommend_for: str
    # Autoregressive decoders timed.
    ar: tuple[ARShape, ...]
    # Batch sizes of the encoder and the autoregressive decoders.
    batches: tuple[int, ...]
    # Transcript lengths N in tokens.
    lengths: tuple[int, ...]
    # Untimed runs of each (model, batch) group before its timings (at least 1).
    warmup: int
    # Untimed runs of each measurement's own shape right before it is timed: on a GPU the
    # first call at a new shape pays for memory allocation and kernel selection (on an H100, a
    # batch-16 large-v3 encoder call took 3.3 s cold and 0.12 s warm); CPU kernels need none.
    shape_warmup: int
    # Timed runs per measurement (the median is reported) ...
    repeats: int
    # ... fewer once the timed runs of one measurement add up to this many seconds.
    max_time_s: float
    # Use the real Whisper-base weights when installed (and time faster-whisper on them).
    real_weights: bool
    # PDD's self-attention keys recomputed every this many steps (`decode.kv_refresh`); 1 =
    # every step, the paper's decoding (the decoder-only timings).
    pdd_kv_refresh: int = 1
    # End to end (bench.e2e): the whisfusion config whose pipeline is timed ...
    e2e_config: str = "tiny"
    # ... at these batch sizes (1 = one clip after another; the largest holds every clip) ...
    e2e_batches: tuple[int, ...] = (1, 16)
    # ... against Whisper-base in CTranslate2 at this compute type (None: not timed; it needs
    # the real weights) ...
    e2e_ct2: str | None = None
    # ... and against the profile's AR shapes in Transformers with a static KV cache.
    e2e_transformers: bool = False
    # Config overrides of the timed whisfusion pipeline (key=value).
    e2e_overrides: tuple[str, ...] = ()
    # A trained checkpoint timed instead of the config's untrained model (its length
    # prediction decides the canvas the steps run on); None: the config.
    e2e_checkpoint: str | None = None

    def __post_init__(self):
        if self.warmup < 1 or self.repeats < 1 or self.shape_warmup < 0 or self.pdd_kv_refresh < 1:
            raise ValueError(
                f"need warmup >= 1, repeats >= 1, shape_warmup >= 0 and kv_refresh >= 1, got "
                f"{self.warmup}, {self.repeats}, {self.shape_warmup}, {self.pdd_kv_refresh}"
            )

    def with_overrides(
        self,
        batches: Sequence[int] | None = None,
        steps: Sequence[int] | None = None,
        candidates: Sequence[int] | None = None,
        sizes: Sequence[str] | None = None,
        **fields,
    ) -> Profile:
        """A copy with command-line choices applied; None keeps the profile's own.

        batches, steps, candidates replace that dimension in every diffusion decoder's
        settings (batches also for the encoder and AR decoders). sizes picks the diffusion
        decoders by config name; one the profile lacks gets the first decoder's settings.
        """
        runs = self.pdd
        if sizes is not None:
            own = {run.shape.name: run for run in self.pdd}
            runs = tuple(own.get(s) or PDDRun(pdd_shape(s), self.pdd[0].settings) for s in sizes)
        runs = tuple(
            PDDRun(run.shape, replace_in_settings(run.settings, batches, steps, candidates))
            for run in runs
        )
        fields = {k: v for k, v in fields.items() if v is not None}
        return dataclasses.replace(
            self,
            pdd=runs,
            batches=tuple(batches) if batches else self.batches,
            recommend_for=self.recommend_for if sizes is None else sizes[-1],
            **fields,
        )


def default_autocast(device: str) -> str | None:
    """The autocast dtype name users decode with on `device` (`decode.dtype`'s default)."""
    dtype = resolve_dtype(DecodeConfig().dtype, device)
    return None if dtype == torch.float32 else str(dtype).removeprefix("torch.")


LENGTHS = (16, 32, 64, 128, 256)
BATCHES = (1, 16)


def cpu_profile() -> Profile:
    # A few minutes on two cores: T and K are a subset of the GPU grid; batch 16 (where the CPU
    # is arithmetic-bound and time grows in proportion to T) is timed at the default T only, and
    # the base-sized decoder at batch 1, the default T and K <= 4 only.
    tuned = DecodeConfig().steps
    small = grid((1,), (1, tuned, 8), (1, 4, 8)) + grid((16,), (tuned,), (1, 4, 8))
    return Profile(
        name="cpu",
        device="cpu",
        autocast=default_autocast("cpu"),
        encoder=WHISPER_BASE_ENCODER,
        pdd=(
            PDDRun(pdd_shape("tiny"), small),
            PDDRun(pdd_shape("demo"), small),
            PDDRun(BASE_SIZED, grid((1,), (tuned,), (1, 4))),
        ),
        recommend_for="demo",
        ar=(AR_SHAPES["whisper-base"],),
        batches=BATCHES,
        lengths=LENGTHS,
        warmup=1,
        shape_warmup=0,
        repeats=3,
        max_time_s=3.0,
        real_weights=True,
        # the default demo model (`make train`), whatever decoder it has
        e2e_config="demo",
        # faster-whisper's usual CPU setting, its fastest here
        e2e_ct2="int8",
    )


def gpu_profile() -> Profile:
    return Profile(
        name="gpu",
        device="cuda",
        autocast=default_autocast("cuda"),
        encoder=WHISPER_LARGE_V3_ENCODER,
        pdd=(PDDRun(pdd_shape("large"), grid(BATCHES, (1, 2, 4, 8), (1, 4, 8, 16))),),
        recommend_for="large",
        ar=(AR_SHAPES["whisper-large-v3"], AR_SHAPES["whisper-large-v3-turbo"]),
        batches=BATCHES,
        lengths=LENGTHS,
        warmup=2,
        shape_warmup=1,
        repeats=5,
        max_time_s=10.0,
        # no large-v3 weights ship on PyPI; a random encoder of the same shape costs the same
        real_weights=False,
        e2e_config="large",
        e2e_transformers=True,
        # at batch 1 a GPU decoder is bound by kernel launches: capture the steps
        e2e_overrides=("decode.compile=true",),
    )


PROFILES = {"cpu": cpu_profile, "gpu": gpu_profile}
