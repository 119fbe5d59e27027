"""Model configuration: the frozen encoder, the diffusion decoder, the mask schedule, the canvas.

Every default lives here, once, with a comment saying what it is for. YAML files under `configs/`
only state what differs from these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EncoderConfig:
    # Weights: a Hugging Face dir, an openai-whisper .pt file, a CTranslate2 dir, or "random".
    source: str = "random"
    # Expected sha256 of the weights file; checked at load when set ("" = record, don't check).
    sha256: str = ""
    # "full" pads every clip to 30 s as Whisper was trained; "trim" gives each clip its own
    # window, its duration rounded up to trim_multiple_s (batch-invariant, cacheable features).
    window: str = "full"
    # With window=trim, each clip's duration is rounded up to this (a multiple of 0.02 s).
    trim_multiple_s: float = 2.0
    # Which block's output the decoder reads: 0 = the last (through Whisper's final LayerNorm),
    # as the method does; k >= 1 = block k, and the later blocks are never run. On a small
    # corpus a middle block generalizes better (the demo reads block 3 of Whisper-base's 6).
    output_layer: int = 0
    # Shape of a randomly initialised encoder (used only when source == "random").
    n_mels: int = 80
    # Width of the random encoder's residual stream.
    width: int = 64
    # Number of transformer blocks of the random encoder.
    layers: int = 2
    # Attention heads of the random encoder.
    heads: int = 2
    # Seed of the random encoder, so every rank and every run builds the same one.
    seed: int = 0


@dataclass
class DecoderConfig:
    # "diffusion": the paper's decoder, trained from scratch (whisfusion.decoder); "whisper":
    # Whisper's own pretrained decoder of the encoder's checkpoint, with its tokenizer, adapted
    # to masked denoising (whisfusion.whisper_decoder; it ignores the shape keys below and reads
    # the encoder's last block).
    kind: str = "diffusion"
    # kind whisper: optimizer steps over which self-attention opens from Whisper's causal mask
    # to the bidirectional one PDD reads (DiffuLLaMA's annealing): at step s each later position
    # is visible with probability s / steps. 0 = bidirectional from the first step.
    attention_anneal_steps: int = 0
    # Parameters kept as built or loaded, by name pattern (fnmatch, as in ESPnet's
    # freeze_param), e.g. "blocks.*.cross_attn.key.*": a pretrained decoder keeps part of
    # what it learned, and frozen weights cost no gradient. [] = train everything.
    freeze: list[str] = field(default_factory=list)
    # Transformer blocks (self-attention, cross-attention, SwiGLU MLP).
    layers: int = 2
    # Residual stream width d.
    width: int = 128
    # Attention heads; width must be divisible by heads.
    heads: int = 4
    # SwiGLU hidden size as a multiple of width (rounded to a multiple of 64).
    mlp_ratio: float = 2.6667
    # Dropout on attention and MLP outputs during training.
    dropout: float = 0.0
    # RoPE base frequency.
    rope_theta: float = 10000.0
    # Recompute block activations in backward to save memory (slower).
    activation_checkpointing: bool = False
    # Adjacent encoder frames concatenated into one frame for cross-attention and the alignment
    # head: 2 reads Whisper's 20 ms frames as 40 ms ones, at half the cost of the head's output
    # layer and of cross-attention (whisfusion.decoder.stack_frames). 1 = every frame as it is.
    frame_stack: int = 1
    # The align_* keys configure the CTC alignment prior (whisfusion.prior), an optional
    # extension of the diffusion decoder, not part of the paper's model.
    # Hidden width of the CTC alignment head whose expected token positions bias cross-attention
    # (whisfusion.alignment); 0 = no head, the decoder learns alignment from data alone.
    align_hidden: int = 0
    # Kernel width (frames, odd) of a residual depthwise convolution on the alignment head's
    # hidden layer, so each frame's label also sees its neighbours; 0 = each frame alone.
    align_context: int = 0
    # Weight of the alignment head's CTC loss (per target token) added to the diffusion loss.
    # The head has no other loss, and AdamW's steps do not depend on a gradient's scale, so the
    # weight acts only through gradient clipping (demo: 1.0 and 0.5 train alike).
    align_ctc_weight: float = 0.5
    # Cross-attention also reads each frame's expected token embedding under the alignment
    # head's posteriors (needs align_hidden > 0), so a canvas position can copy the token its
    # frames were heard as and spend its capacity on context.
    align_token_memory: bool = False
    # The canvas input also gets, at each position, the expected embedding of the token the
    # alignment head hears there (whisfusion.alignment.aligned_token_embedding; needs
    # align_hidden > 0): even an all-[MASK] canvas then starts from what the frames say.
    align_token_input: bool = False
    # Canvas positions of the frames from the head's best path (whole numbers: the i-th token
    # `--method ctc` reads sits at position i) instead of expected counts under its posteriors,
    # which drift by fractions of a position over a sentence and blend neighbouring tokens.
    align_best_path: bool = False
    # Weight of the head's log-probabilities added to the logits at each canvas position
    # (needs align_best_path); 0 = off. The decoder then learns a correction to the head's
    # reading instead of reading every token again.
    align_logit_weight: float = 0.0


@dataclass
class ScheduleConfig:
    # Phase A draws t = (1 - eps) u + eps, u ~ U(0, 1), so t never reaches 0 and 1/t stays finite.
    eps: float = 1.0e-3
    # Phase B (high-mask specialization) draws t ~ U(high_low, high_high).
    high_low: float = 0.7
    # Upper bound of phase B's t.
    high_high: float = 1.0
    # Optimizer step at which training switches from phase A to phase B (-1: never switch).
    switch_step: int = -1
    # Share of each batch drawn from phase B (used when switch_step == -1; 0 = pure phase A).
    high_mask_share: float = 0.0
    # Share of each batch masked as one step of left-to-right block decoding reads it (earlier
    # blocks given, later ones masked, the loss on the drawn block; `decode.blocks`); with
    # switch_step -1, drawn among the sequences that phase B leaves (0 = none).
    block_share: float = 0.0
    # Blocks of that masking, as decode.blocks.
    blocks: int = 4
    # Stratified (antithetic) draws of u across the batch: lower-variance loss estimates.
    antithetic: bool = True


@dataclass
class CanvasConfig:
    # Tokens per second of audio at a high percentile of the training data; 0 = read it from
    # the data directory's stats.json (written by data_prep).
    r_max: float = 0.0
    # Extra canvas positions beyond ceil(duration * r_max).
    margin: int = 8
    # Canvas lengths are rounded up to a multiple of this.
    multiple: int = 8
    # Shortest canvas.
    min_len: int = 16
    # Longest canvas (Whisper's own decoder limit is 448).
    max_len: int = 448


@dataclass
class TokenizerConfig:
    # Path of the SentencePiece model; the trained file also travels inside every checkpoint.
    path: str = ""
    # SentencePiece vocabulary size, special tokens included (model_type char ignores it).
    vocab_size: int = 2000
    # SentencePiece model: "unigram" or "bpe" (subwords), or "char" (one token per character:
    # longer canvases, but every token is seen often, which helps small corpora and CJK).
    model_type: str = "unigram"
    # Languages that get a `<|xx|>` token.
    languages: list[str] = field(
        default_factory=lambda: ["en", "de", "fr", "es", "it", "pt", "nl", "ru", "zh", "ja", "ko"]
    )


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
