"""`WhisfusionDataModule`: WebDataset shards written by data_prep -> batches (see samples.py).

    dm = WhisfusionDataModule(cfg.data, cfg.model.canvas, tokenizer)
    trainer.fit(module, datamodule=dm)     # rank and world size come from the trainer
    dm.stats().summary()  # read, kept and skipped-by-reason counts of this rank

The resume count travels in the checkpoint (`state_dict`), so a resumed run seeds its streams
differently and draws fresh samples.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from braceexpand import braceexpand
from torch.utils.data import DataLoader

from whisfusion.callbacks.preemption import ignore_stop_signals
from whisfusion.config import CanvasConfig, DataConfig
from whisfusion.data.augment import Augmenter
from whisfusion.data.samples import HOST_LENGTHS, ExampleDecoder
from whisfusion.data.shards import read_index
from whisfusion.data.stats import DataStats, StatsReport
from whisfusion.data.stream import (
    TrainStream,
    ValidStream,
    language_weights,
    plan_validation,
    validation_positions,
)
from whisfusion.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def select_shards(index: dict, root: Path, split: str, pattern: str) -> list[dict[str, Any]]:
    """The index entries of `split`, narrowed to `pattern` (brace pattern or directory) if set.

    Returns entries with `path` made absolute.
    """
    entries = [
        {**e, "path": str((root / e["path"]).resolve())}
        for e in index["splits"].get(split, {}).get("shards", [])
    ]
    if pattern:
        base = Path(pattern) if Path(pattern).is_absolute() else root / pattern
        if base.is_dir():
            wanted = {str(p.resolve()) for p in base.glob("*.tar")}
        else:
            wanted = {str(Path(p).resolve()) for p in braceexpand(str(base))}
        unlisted = sorted(wanted - {e["path"] for e in entries})
        if unlisted:
            raise ValueError(
                f"{len(unlisted)} {split} shard(s) matched by '{pattern}' are not in "
                f"{root / 'index.json'} (their languages and hours are unknown), e.g. {unlisted[0]}"
            )
        entries = [e for e in entries if e["path"] in wanted]
    if not entries:
        matching = f" matching '{pattern}'" if pattern else ""
        raise ValueError(f"no {split} shards in {root / 'index.json'}{matching}")
    return entries


def warn_few_shards(
    shards: dict[str, list[str]], weights: dict[str, float], n_streams: int
) -> list[str]:
    """Warn about the drawn languages with fewer shards than (rank, worker) streams.

    Nothing is read twice for it, but streams then often read the same shard at the same time,
    so one rank's batches and its neighbours' hold utterances of the same few shards. Returns
    the languages warned about.
    """
    few = sorted(
        lang for lang, p in shards.items() if weights.get(lang, 0) > 0 and len(p) < n_streams
    )
    if few:
        log.warning(
            "%d training stream(s) (ranks x data.num_workers) but fewer shards in %s: streams "
            "will often read the same shard at once; prepare the data with "
            "`--streams %d` (data_prep) for at least one shard per stream",
            n_streams,
            ", ".join(f"{lang} ({len(shards[lang])})" for lang in few),
            n_streams,
        )
    return few


class WhisfusionDataModule(L.LightningDataModule):
    """Streaming training batches and exactly-once validation batches for every rank."""

    def __init__(
        self,
        data_cfg: DataConfig,
        canvas_cfg: CanvasConfig,
        tokenizer: Tokenizer,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int | None = None,
    ):
        """`batch_size`: utterances per device batch (the batch plan's); None = data.batch_size."""
        super().__init__()
        if not data_cfg.root:
            raise ValueError("data.root is empty: point it at a directory written by data_prep")
        self.cfg = data_cfg
        self.root = Path(data_cfg.root)
        self.decoder = ExampleDecoder(tokenizer, canvas_cfg, data_cfg.max_duration)
        self.augmenter = Augmenter(
            data_cfg.augment_telephone,
            data_cfg.augment_speed,
            canvas_cfg,
            tokenizer.eos_id,
            data_cfg.max_duration,
        )
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size or data_cfg.batch_size
        # Times this run has been resumed from a checkpoint (0 = fresh start).
        self.resume_count = 0
        self._totals = {"train": DataStats(), "val": DataStats()}
        self._index: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        if self.rank is None:
            self.rank = trainer.global_rank if trainer is not None else 0
        if self.world_size is None:
            self.world_size = trainer.world_size if trainer is not None else 1
        self._index = read_index(self.root)
        langs = set(self.decoder.tokenizer.languages)
        for split in self._index["splits"].values():
            unknown = sorted(set(split["languages"]) - langs)
            if unknown:
                raise ValueError(
                    f"{self.root / 'index.json'} has languages {unknown} that the tokenizer "
                    f"has no token for (tokenizer: {sorted(langs)})"
                )

    def _loader(self, dataset, persistent: bool) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=None,  # the datasets batch themselves (buckets, validation plan)
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=persistent and workers > 0,
            # the main process handles SLURM's stop signals; workers must not die of them
            worker_init_fn=ignore_stop_signals,
        )

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        entries = select_shards(self._index, self.root, "train", self.cfg.train_shards)
        shards: dict[str, list[str]] = {}
        hours: dict[str, float] = {}
        for e in entries:
            for lang in e["languages"]:
                shards.setdefault(lang, []).append(e["path"])
                hours[lang] = hours.get(lang, 0.0) + e["hours"]
        weights = language_weights(hours, self.cfg.language_temperature, self.cfg.language_weights)
        log.info(
            "training languages (weight, shards): %s",
            ", ".join(f"{lang} {w:.3f} {len(shards[lang])}" for lang, w in sorted(weights.items())),
        )
        warn_few_shards(shards, weights, self.world_size * max(1, self.cfg.num_workers))
        stream = TrainStream(
            shards,
            weights,
            self.decoder,
            batch_size=self.batch_size,
            max_batch_seconds=self.cfg.max_batch_seconds,
            bucket_edges=self.cfg.bucket_edges,
            shuffle_buffer=self.cfg.shuffle_buffer,
            seed=self.cfg.seed,
            rank=self.rank,
            resume_count=self.resume_count,
            augmenter=self.augmenter,
        )
        return self._loader(stream, persistent=False)

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        entries = select_shards(self._index, self.root, "valid", self.cfg.val_shards)
        positions = validation_positions(
            [(e["path"], e["samples"], e["languages"][0]) for e in entries],
            self.cfg.val_max_per_language,
        )
        batches = plan_validation(positions, self.rank, self.world_size, self.batch_size)
        stream = ValidStream(batches, self.decoder, positions)
        return self._loader(stream, persistent=True)

    def _require_setup(self) -> None:
        if self._index is None:
            self.setup()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Add the counts a worker shipped in the batch to this rank's totals; keep a host copy
        of the audio lengths (a list, which stays on the host), so that the encoder plans its
        windows without waiting for the device."""
        trainer = self.trainer
        split = "train" if trainer is not None and trainer.training else "val"
        self._totals[split].merge(batch["stats"])
        return {**batch, HOST_LENGTHS: batch["audio_lens"].tolist()}

    def stats(self) -> StatsReport:
        """This rank's totals since construction: read, kept and skipped by reason."""
        return StatsReport(train=self._totals["train"].as_dict(), val=self._totals["val"].as_dict())

    def state_dict(self) -> dict[str, Any]:
        # the run resumed from this checkpoint is one more resume
        return {"resume_count": self.resume_count + 1}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resume_count = int(state_dict["resume_count"])
