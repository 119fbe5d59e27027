"""`Whisfusion`: the frozen encoder, a text decoder and the tokenizer as one model.

    model = Whisfusion.from_checkpoint("runs/demo/checkpoints/last.ckpt")
    results = model.transcribe(["a.flac", "b.mp3"], language="en")

The LightningModule trains it; `whisfusion.checkpoint` holds the checkpoint format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from whisfusion import checkpoint
from whisfusion.canvas import canvas_length
from whisfusion.config import RunConfig
from whisfusion.decoders import build_decoder
from whisfusion.encoder import FrozenWhisperEncoder, build_encoder
from whisfusion.kv_reuse import ReusedKeys
from whisfusion.language_vocab import LanguageFilter, LanguageVocabulary
from whisfusion.options import DecodeOptions
from whisfusion.pdd import Transcript, canvas_for, decode_result, options_from_config, pdd_decode
from whisfusion.pdd.buckets import length_groups, pad_to_bucket, trim_frames
from whisfusion.pdd.compiled import FRAME_MULTIPLE, denoiser
from whisfusion.precision import kept_casts
from whisfusion.prior import AlignmentPrior, HeadReading
from whisfusion.quantize import int8_decoder, uses_int8
from whisfusion.tokenizer import Tokenizer
from whisfusion.transcribe import transcribe_audio


class Whisfusion(nn.Module):
    """Frozen Whisper encoder + text decoder (`whisfusion.denoiser.Denoiser`) + tokenizer.

    The encoder is frozen (see `FrozenWhisperEncoder`): never trained, always in eval mode, and
    left out of this module's `state_dict`, so checkpoints hold the decoder only and record the
    encoder's source and hash (`whisfusion.checkpoint`).

    Args:
        language_vocab: token counts per language of the training transcripts, for
            `decode.language_vocab_min_count`; None when training had none.
    """

    def __init__(
        self,
        cfg: RunConfig,
        tokenizer: Tokenizer,
        encoder: FrozenWhisperEncoder,
        language_vocab: LanguageVocabulary | None = None,
    ):
        super().__init__()
        self.cfg, self.tokenizer, self.encoder = cfg, tokenizer, encoder
        self.language_vocab = language_vocab
        self.decoder = build_decoder(
            cfg.model.decoder, tokenizer, encoder, cfg.model.canvas.max_len
        )

    @classmethod
    def from_config(
        cls,
        cfg: RunConfig,
        tokenizer: Tokenizer,
        language_vocab: LanguageVocabulary | None = None,
    ) -> Whisfusion:
        return cls(cfg, tokenizer, build_encoder(cfg.model.encoder), language_vocab)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        encoder_source: str | None = None,
        map_location: str | torch.device = "cpu",
        use_ema: bool = True,
    ) -> Whisfusion:
        """Rebuild a trained model from a training checkpoint (`checkpoint.load_model`)."""
        return checkpoint.load_model(path, encoder_source, map_location, use_ema)

    # Transcribe files and / or 1-D 16 kHz waveforms: `whisfusion.transcribe.transcribe_audio`.
    transcribe = transcribe_audio

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def prior(self) -> AlignmentPrior | None:
        """The decoder's CTC alignment prior, or None."""
        return getattr(self.decoder, "prior", None)

    def encode(
        self, audio: torch.Tensor, lengths: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, S) 16 kHz, lengths (B,) -> features (B, T, E), valid (B, T) bool; `dtype`
        the encoder's precision (None: what `decode.dtype` "auto" means on its device)."""
        return self.encoder.encode(audio, lengths, dtype)

    def cross_cache(self, features: torch.Tensor, valid: torch.Tensor, reading=None):
        """The decoder's cache of features (N, T, E), valid (N, T), in the decoder's dtype;
        `reading` (a `prior.HeadReading`) only for a decoder with the alignment prior."""
        features = features.to(next(self.decoder.parameters()).dtype)
        if reading is None:
            return self.decoder.cross_cache(features, valid)
        return self.decoder.cross_cache(features, valid, reading)

    def auxiliary_losses(
        self, cache, tokens: torch.Tensor, canvas_valid: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, float]]:
        """Losses beside the diffusion loss, by name, each with its weight: the alignment
        prior's CTC loss, or none."""
        if self.prior is None:
            return {}
        return self.prior.losses(cache.prior, tokens, canvas_valid, self.tokenizer.eos_id)

    def check_options(self, options: DecodeOptions) -> None:
        """Raise ValueError when `options` read something this model does not have."""
        if options.method == "ctc" or options.blank_penalty:
            self._alignment_prior()
        if options.align_weight is not None and (
            self.prior is None or not self.cfg.model.decoder.align_best_path
        ):
            raise ValueError(
                "decode.align_weight weighs the alignment head's reading at whole canvas "
                "positions, and this model has none (model.decoder.align_best_path is off)"
            )
        if options.language_vocab_min_count:
            self._language_vocab()

    def _alignment_prior(self) -> AlignmentPrior:
        if self.prior is None:
            raise ValueError(
                "decode method 'ctc' and decode.blank_penalty read the alignment head, and "
                "this model has none (model.decoder.align_hidden is 0)"
            )
        return self.prior

    def _language_vocab(self) -> LanguageVocabulary:
        if self.language_vocab is None:
            raise ValueError(
                "decode.language_vocab_min_count reads the per-language token counts of the "
                "training transcripts, and this model has none (train on a data directory whose "
                "tokenizer stage wrote language_tokens.json)"
            )
        return self.language_vocab

    def allowed_tokens(
        self, languages: Sequence[str | None] | None, min_count: int
    ) -> torch.Tensor | None:
        """(N, V) bool on the model's device: the tokens each utterance's given language used
        at least `min_count` times in training (EOS always; every token where the language is
        None), or None when nothing is restricted."""
        if min_count <= 0 or languages is None or all(lang is None for lang in languages):
            return None
        vocab = self._language_vocab()
        return vocab.allowed(languages, min_count, [self.tokenizer.eos_id]).to(self.device)

    @torch.no_grad()
    def decode_features(
        self,
        features: torch.Tensor,
        valid: torch.Tensor,
        durations: Sequence[float],
        languages: Sequence[str | None] | None = None,
        options: DecodeOptions | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
    ) -> list[Transcript]:
        """PDD over encoder features (or, with `options.method` "ctc", the greedy reading of the
        alignment head): one transcript per utterance.

        Args:
            features: (N, T, E) encoder output; valid: (N, T) bool.
            durations: seconds of audio per utterance (sets each canvas length).
            languages: per utterance a language code to fix on the canvas, or None to let the
                decoder predict it.
            options: decoding settings (default: the model's config).
            generator: sampling noise; default a fresh one seeded with `options.seed`.
        """
        options = options or DecodeOptions.from_config(self.cfg.decode)
        self.check_options(options)
        features, valid = features.to(self.device), valid.to(self.device)
        if generator is None:
            generator = torch.Generator().manual_seed(options.seed)
        lengths = [canvas_length(float(d), self.cfg.model.canvas) for d in durations]
        groups = length_groups(lengths, options.max_padding)
        if options.method != "ctc" and len(groups) > 1:
            return self._decode_groups(
                groups,
                features,
                valid,
                durations,
                languages,
                options,
                generator,
                return_trajectory,
            )
        allowed = self.allowed_tokens(languages, options.language_vocab_min_count)
        reading = None
        if self.prior is not None:
            reading = HeadReading(allowed, options.blank_penalty, options.align_weight)
        if options.method == "ctc":
            return self.read_ctc(features, valid, languages, reading)
        lang_ids = None
        if languages is not None:
            lang_ids = [
                None if lang is None else self.tokenizer.lang_id(lang) for lang in languages
            ]
        canvas, canvas_valid = canvas_for(
            lengths, self.tokenizer.mask_id, self.tokenizer.eos_id, lang_ids
        )
        buckets = options.canvas_buckets if options.compile else ()
        canvas, canvas_valid = pad_to_bucket(
            canvas, canvas_valid, buckets, self.cfg.model.canvas.max_len, self.tokenizer.eos_id
        )
        canvas, canvas_valid = canvas.to(self.device), canvas_valid.to(self.device)
        row_valid = canvas_valid.repeat_interleave(options.candidates, dim=0)
        features, valid = trim_frames(features, valid, FRAME_MULTIPLE if options.compile else 1)
        int8 = uses_int8(options.int8, self.device)
        decoder = int8_decoder(self.decoder) if int8 else self.decoder
        step = denoiser(decoder, options.compile)

        def denoise(tokens, cache, where):
            canvas_valid = row_valid[:, : tokens.shape[1]]
            if options.compile:  # one output shape: every position's logits, then `where`
                return step(tokens, cache, canvas_valid)[where]
            return step(tokens, cache, canvas_valid, where)

        cache = self.cross_cache(features, valid, reading)
        if options.kv_refresh > 1:
            cache.reuse = ReusedKeys(options.kv_refresh)
        with kept_casts(decoder):
            result = pdd_decode(
                denoise,
                cache,
                canvas,
                canvas_valid,
                mask_id=self.tokenizer.mask_id,
                eos_id=self.tokenizer.eos_id,
                generator=generator,
                return_trajectory=return_trajectory,
                logit_filters=() if allowed is None else [LanguageFilter(allowed)],
                # a compiled step keeps its canvas width
                tail_margin=None if options.compile else self.cfg.model.canvas.margin,
                **options_from_config(options),
            )
        return decode_result(result, self.tokenizer, options.select, languages)

    def _decode_groups(
        self, groups, features, valid, durations, languages, options, generator, trajectory
    ) -> list[Transcript]:
        """`decode_features` on each group of utterances (indices into the batch) in turn, the
        transcripts back in batch order."""
        out: list[Transcript | None] = [None] * len(durations)
        whole = options.replace(max_padding=1.0)
        for group in groups:
            rows = torch.tensor(group, device=features.device)
            part = self.decode_features(
                features[rows],
                valid[rows],
                [durations[i] for i in group],
                None if languages is None else [languages[i] for i in group],
                whole,
                generator,
                trajectory,
            )
            for i, transcript in zip(group, part, strict=True):
                out[i] = transcript
        return out

    @torch.no_grad()
    def read_ctc(
        self,
        features: torch.Tensor,
        valid: torch.Tensor,
        languages: Sequence[str | None] | None = None,
        reading: HeadReading | None = None,
    ) -> list[Transcript]:
        """Greedy CTC reading of the alignment head: one transcript per utterance.

        The head reads tokens only: an utterance's language is the given one, else None.
        features: (N, T, E) encoder output; valid: (N, T) bool; reading: the tokens each
        utterance may contain and the blank penalty (`prior.HeadReading`).

        Raises:
            ValueError: the model has no alignment head.
        """
        prior = self._alignment_prior()
        features = features.to(self.device, next(self.decoder.parameters()).dtype)
        frames, valid = self.decoder.frames(features, valid.to(self.device))
        ids = prior.greedy(frames, valid, reading or HeadReading())
        languages = languages if languages is not None else [None] * len(ids)
        texts = [self.tokenizer.decode(row).strip() for row in ids]
        return [
            Transcript(text=text, language=lang, candidates=[text])
            for text, lang in zip(texts, languages, strict=True)
        ]
