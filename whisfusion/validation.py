"""Periodic PDD validation: decode the validation set, score it, and show it in TensorBoard.

Every validation run (every `validation.every_n_steps` optimizer steps) each rank decodes its
share of the validation set with PDD. Edit counts are gathered across ranks with every
utterance counted once, then logged: per-language WER / CER, per-group and average rates, the
decoding speed (RTFx), a text table of reference / hypothesis pairs for fixed utterances, and
one denoising trajectory (the canvas after each step), so a person can watch the model learn.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from whisfusion.config import DecodeConfig, ValidationConfig
from whisfusion.options import DecodeOptions
from whisfusion.precision import decoding_precision
from whisfusion.scoring import Report, gather_counts, utterance_counts
from whisfusion.scoring.report import metric_of


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|") or "(empty)"


class PDDValidation(L.Callback):
    """Decodes and scores the outputs of `WhisfusionModule.validation_step`."""

    def __init__(self, decode: DecodeConfig, cfg: ValidationConfig):
        self.options, self.cfg = DecodeOptions.from_config(decode), cfg
        self.report: Report | None = None
        # CER of every language (characters), beside the report in each language's own unit
        self.char_report: Report | None = None
        # optimizer step of the latest report (None before the first)
        self.report_step: int | None = None
        self._reset()

    def _reset(self) -> None:
        self._counts: dict[str, tuple[str, Any]] = {}
        self._char_counts: dict[str, tuple[str, Any]] = {}
        self._examples: dict[str, list[tuple[str, str, str]]] = {}
        self._trajectory: list[str] | None = None
        self._lid: list[bool] = []
        self._audio_s = 0.0
        self._decode_s = 0.0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        keep_trajectory = self.cfg.log_trajectory and batch_idx == 0 and trainer.is_global_zero
        langs = list(batch["langs"])
        started = time.perf_counter()
        with decoding_precision(self.options.dtype, pl_module.model.device):
            transcripts = pl_module.model.decode_features(
                outputs["features"],
                outputs["feature_valid"],
                batch["durations"].tolist(),
                languages=None if self.cfg.predict_language else langs,
                options=self.options,
                # the same noise at every validation, so changes come from the weights
                generator=torch.Generator().manual_seed(self.options.seed + batch_idx),
                return_trajectory=keep_trajectory,
            )
        self._decode_s += time.perf_counter() - started
        dup = batch.get("dup", torch.zeros(len(langs), dtype=torch.bool)).tolist()
        for utt_id, lang, ref, tr, is_dup in zip(
            batch["ids"], langs, batch["texts"], transcripts, dup, strict=False
        ):
            if is_dup:
                continue
            self._counts[utt_id] = (lang, utterance_counts(lang, ref, tr.text))
            self._char_counts[utt_id] = (lang, utterance_counts(lang, ref, tr.text, "char"))
            self._lid.append(tr.language == lang)
            shown = self._examples.setdefault(lang, [])
            if len(shown) < self.cfg.examples_per_language:
                shown.append((utt_id, ref, tr.text))
        self._audio_s += float(batch["durations"][~torch.tensor(dup, dtype=torch.bool)].sum())
        if keep_trajectory and transcripts[0].trajectory is not None:
            self._trajectory = transcripts[0].trajectory

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        # collectives: every rank calls them
        self.report = Report(gather_counts(self._counts))
        self.char_report = Report(gather_counts(self._char_counts), unit="char")
        self.report_step = trainer.global_step
        for lang in self.report.languages():
            metric = metric_of(lang).lower()
            pl_module.log(
                f"val/{metric}_{lang}", self.report.per_language[lang].rate, rank_zero_only=True
            )
        for group, rate in self.report.group_rates().items():
            pl_module.log(f"val/err_{group}", rate, rank_zero_only=True)
        if self.report.average is not None:
            pl_module.log("val/wer_avg", self.report.average, rank_zero_only=True)
            pl_module.log("val/cer_mean", self.char_report.language_mean, rank_zero_only=True)
        if self._decode_s > 0:
            # decoding alone (PDD, detokenize, select): the features come from validation_step
            pl_module.log("val/decode_rtfx", self._audio_s / self._decode_s, rank_zero_only=True)
        if self.cfg.predict_language and self._lid:
            pl_module.log(
                "val/language_accuracy", sum(self._lid) / len(self._lid), rank_zero_only=True
            )
        if trainer.is_global_zero:
            self._log_text(trainer)

    def _log_text(self, trainer) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_text"):
            return
        step = trainer.global_step
        rows = ["| lang | id | reference | hypothesis |", "|---|---|---|---|"]
        for lang in sorted(self._examples):
            for utt_id, ref, hyp in self._examples[lang]:
                rows.append(
                    f"| {lang} | {utt_id} | {_markdown_escape(ref)} | {_markdown_escape(hyp)} |"
                )
        experiment.add_text("val/examples", "\n".join(rows), step)
        if self.report is not None:
            experiment.add_text("val/report", self.report.to_markdown(), step)
        if self._trajectory:
            lines = [
                f"step {i + 1}: `{_markdown_escape(c)}`  " for i, c in enumerate(self._trajectory)
            ]
            experiment.add_text("val/trajectory", "\n".join(lines), step)
