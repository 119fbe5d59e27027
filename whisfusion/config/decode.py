"""Decoding (PDD) and periodic validation configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

# How transcripts are read from the model: "pdd" (the diffusion decoder) or "ctc" (greedy
# reading of the alignment head, for models with model.decoder.align_hidden > 0).
DECODE_METHODS = ("pdd", "ctc")
# Names `dtype` takes (whisfusion.precision says what each means on a device).
DECODE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class DecodeConfig:
    # "pdd" or "ctc" (DECODE_METHODS); the settings below apply to pdd.
    method: str = "pdd"
    # Denoising steps T.
    steps: int = 4
    # Candidate transcripts K per utterance, decoded together in the batch dimension.
    candidates: int = 8
    # "low_confidence" (commit the most confident masked positions) or "random" (re-mask a share).
    remasking: str = "low_confidence"
    # Re-mask fractions per step for remasking=random (v1 schedule); last entry repeats.
    random_schedule: list[float] = field(default_factory=lambda: [1.0, 0.9, 0.85, 0.8])
    # Semi-autoregressive blocks (LLaDA): the canvas is filled left to right in this many
    # blocks, each during its share of the T steps (low_confidence only); 1 = all at once.
    blocks: int = 1
    # Length first (as Mask-Predict): the first step commits the canvas's tail it reads as EOS
    # padding with at least this probability, and all T steps' budgets go to the positions
    # before it (low_confidence only); 0 = off, the paper's schedule over the whole canvas.
    eos_threshold: float = 0.0
    # Besides each step's budget, commit every position predicted with at least this
    # probability (Fast-dLLM's parallel decoding; low_confidence only): fewer denoiser calls
    # where the model is sure, T stays the most; 0 = off, the paper's fixed budgets.
    commit_threshold: float = 0.0
    # Self-attention keys and values recomputed at every this many denoising steps (a full
    # pass); in between a step runs only the positions it reads and the ones just committed,
    # the rest attend with their last keys and values (dKV-Cache, Fast-dLLM's approximate
    # cache; both decoders). 1 = every step, the exact decoder.
    kv_refresh: int = 1
    # Gumbel temperature of candidate rows 2..K (row 1 stays greedy); 0 = all greedy.
    temperature: float = 1.0
    # How one candidate is picked: "confidence", "mbr" or "rover".
    select: str = "confidence"
    # Weight of the alignment head's log-probabilities in the decoder's logits at each canvas
    # position (models with model.decoder.align_best_path); None = the trained
    # model.decoder.align_logit_weight. Like the CTC weight of joint CTC/attention decoding,
    # decoding may lean on the head more than training did.
    align_weight: float | None = None
    # With a given language, block the tokens that language's training transcripts used fewer
    # than this many times (counted by data preparation, carried in the checkpoint; see
    # whisfusion.language_vocab); 0 = any token of the shared vocabulary.
    language_vocab_min_count: int = 0
    # Taken off the alignment head's blank log-probability before it is read, at decoding only
    # (models with model.decoder.align_hidden > 0): a head trained on little data drops tokens
    # it hears with moderate confidence, and this trades those deletions for insertions.
    blank_penalty: float = 0.0
    # Seed of the sampling noise: the same inputs and seed give the same output.
    seed: int = 0
    # Utterances per decoding batch in transcribe / evaluate.
    batch_size: int = 16
    # Precision of the encoder and decoder at inference (transcribe, evaluate, validation,
    # bench): "auto" = bfloat16 autocast on CUDA, float32 on the CPU (bf16 autocast measured
    # slower there at batch 1; see whisfusion.precision), or "float32" / "bfloat16" / "float16".
    dtype: str = "auto"
    # On the CPU: the decoder's linear layers with int8 weights and dynamic int8 matmuls (as
    # faster-whisper's int8), the rest in `dtype` (whisfusion.quantize); a GPU ignores it.
    int8: bool = False
    # Compile the per-step denoiser call (torch.compile; CUDA graphs on CUDA, see
    # whisfusion.pdd.compiled). Off by default: each new shape costs a compilation (seconds
    # on a GPU, a minute on a small CPU) that only long runs earn back.
    compile: bool = False
    # With `compile`, canvases are padded to the smallest of these widths that holds them
    # (model.canvas.max_len above the largest), so few shapes are compiled: padded positions
    # cost decoder work, which eager decoding does not spend (it pads to the batch's longest).
    canvas_buckets: list[int] = field(default_factory=lambda: [64, 128, 256])
    # A decoding batch runs as groups of similar canvas lengths, each canvas padded by at most
    # this share of its group's longest (whisfusion.pdd.buckets.length_groups): a 2 s clip
    # beside a 30 s one otherwise runs every step at the 30 s canvas. 1 = the whole batch in
    # one PDD call, for a GPU, whose throughput comes from wide calls; the CPU demo sets 0.
    max_padding: float = 1.0
    # `transcribe` / `evaluate`: audio longer than this many seconds is cut at its pauses
    # into segments of at most this length, decoded apart and their transcripts joined
    # (whisfusion.longform.plan_segments); for a model trained on clips this short. 0 = off:
    # one 30 s window, longer audio in overlapping windows whose transcripts are merged.
    segment_s: float = 0.0


@dataclass
class ValidationConfig:
    # Run PDD validation every this many optimizer steps (0 = only at the end).
    every_n_steps: int = 500
    # Reference / hypothesis pairs logged per language as a TensorBoard text table.
    examples_per_language: int = 3
    # Log one denoising trajectory (the canvas after each step).
    log_trajectory: bool = True
    # Let the decoder predict the language (and log its accuracy) instead of giving it.
    predict_language: bool = False
    # Metric the checkpoint callback monitors ("" = keep the last checkpoint only).
    monitor: str = "val/wer_avg"
