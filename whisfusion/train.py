"""Build the trainer, the model and the data for a run, and train (resuming when possible)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from whisfusion.callbacks.attention_anneal import AttentionAnneal
from whisfusion.callbacks.data_stats import DataStatsLogger
from whisfusion.callbacks.ema import EMA
from whisfusion.callbacks.preemption import StopOnSignal, TrainingStopped
from whisfusion.checkpoint_io import AtomicCheckpointIO
from whisfusion.config import RunConfig, config_to_yaml
from whisfusion.decoders import build_tokenizer
from whisfusion.distributed import BatchPlan, RankAgreement, plan_for, train_shard_listing
from whisfusion.encoder import build_encoder
from whisfusion.language_vocab import FILE_NAME as LANGUAGE_VOCAB_FILE
from whisfusion.language_vocab import LanguageVocabulary
from whisfusion.lightning_module import WhisfusionModule
from whisfusion.model import Whisfusion
from whisfusion.options import DecodeOptions
from whisfusion.scoring import cer_line
from whisfusion.slurm import cluster_plugins, slurm_job_id
from whisfusion.tokenizer import Tokenizer
from whisfusion.validation import PDDValidation
from whisfusion.whisper_tokenizer import whisper_r_max

log = logging.getLogger("whisfusion.train")

# The frozen encoder is in eval mode on purpose; Lightning warns about any eval-mode module.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# Lightning 2.6 calls a pytree API that torch 2.11 deprecated; nothing for users to act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def resolve_data_paths(cfg: RunConfig) -> None:
    """Fill what the data directory knows (tokenizer, r_max) into the config, in place.

    stats.json's r_max counts the data directory's SentencePiece tokens; a run on Whisper's
    tokenizer measures its own (`whisper_r_max`)."""
    root = Path(cfg.data.root) if cfg.data.root else None
    if not cfg.model.tokenizer.path:
        if root is None:
            raise ValueError("no tokenizer: set model.tokenizer.path or data.root")
        cfg.model.tokenizer.path = str(root / "tokenizer.model")
    if cfg.model.canvas.r_max <= 0 and cfg.model.decoder.kind != "whisper":
        stats = root / "stats.json" if root else None
        if stats is None or not stats.is_file():
            raise ValueError(
                f"model.canvas.r_max is 0 and there is no stats.json in data.root ({root})"
            )
        cfg.model.canvas.r_max = float(json.loads(stats.read_text())["r_max"])


def language_vocab_beside(cfg: RunConfig, tokenizer) -> LanguageVocabulary | None:
    """The per-language token counts data preparation wrote beside the tokenizer model, if any
    (in that SentencePiece model's ids: none for Whisper's tokenizer)."""
    path = Path(cfg.model.tokenizer.path).with_name(LANGUAGE_VOCAB_FILE)
    if not isinstance(tokenizer, Tokenizer) or not path.is_file():
        return None
    return LanguageVocabulary.from_file(path, tokenizer.languages, tokenizer.vocab_size)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The run directory's `last.ckpt`, if a previous (possibly killed) run left one."""
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def build_strategy(cfg: RunConfig):
    """The Lightning strategy of `trainer.strategy` ("ddp", or a Lightning name).

    Raises:
        ValueError: a sharded strategy (FSDP, DeepSpeed): the decoder (0.3B parameters at the
            paper's size) and its AdamW state fit on one device, so DDP is what is supported.
    """
    name = cfg.trainer.strategy
    if name.startswith(("fsdp", "deepspeed")):
        raise ValueError(
            f"trainer.strategy={name} is not supported: the trained decoder and its optimizer "
            "state fit on one device; use trainer.strategy=ddp"
        )
    if name == "ddp":
        # Every decoder parameter gets a gradient every step (a non-finite one too, see
        # whisfusion.callbacks.nonfinite), so DDP need not search the graph for unused ones.
        # The buffers (the frozen encoder's and the decoder's constant tables) are identical on
        # every rank and never change, so broadcasting them from rank 0 at every forward would
        # only move bytes.
        return DDPStrategy(find_unused_parameters=False, broadcast_buffers=False)
    return name


def build_trainer(cfg: RunConfig, run_dir: Path, callbacks: list, plan: BatchPlan) -> L.Trainer:
    t = cfg.trainer
    trainer = L.Trainer(
        default_root_dir=str(run_dir),
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices if t.devices == "auto" else int(t.devices),
        num_nodes=t.num_nodes,
        precision=t.precision,
        strategy=build_strategy(cfg),
        accumulate_grad_batches=plan.accumulate,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
        gradient_clip_val=cfg.optim.grad_clip or None,
        log_every_n_steps=t.log_every_n_steps,
        # Streams have no epochs: validate every N optimizer steps instead (Lightning counts
        # micro-batches here, hence the accumulation factor).
        val_check_interval=cfg.validation.every_n_steps * plan.accumulate or None,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        # The data module splits shards and samples by rank itself.
        use_distributed_sampler=False,
        enable_progress_bar=t.progress_bar,
        logger=TensorBoardLogger(str(run_dir), name="tensorboard", version=""),
        callbacks=callbacks,
    )
    if trainer.world_size != plan.world_size:
        raise ValueError(
            f"the trainer runs {trainer.world_size} ranks but the batch plan assumed "
            f"{plan.world_size}: set trainer.devices to a number"
        )
    return trainer


def run_training(cfg: RunConfig) -> Path:
    """Train `cfg`; returns the run directory (config, checkpoints, TensorBoard logs)."""
    from whisfusion.data.datamodule import WhisfusionDataModule

    L.seed_everything(cfg.trainer.seed, workers=True)
    if torch.cuda.is_available():
        # TF32 tensor cores for the float32 matmuls left outside bf16 autocast
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    resolve_data_paths(cfg)
    run_dir = Path(cfg.trainer.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    # data.batch_size is the most one device holds; the plan may choose less. The config stays
    # as given; the plan is written beside it and into every checkpoint (RankAgreement).
    plan = plan_for(cfg)
    (run_dir / "batch_plan.json").write_text(json.dumps(plan.as_dict(), indent=1) + "\n")
    encoder = build_encoder(cfg.model.encoder)
    tokenizer = build_tokenizer(cfg, encoder)
    if cfg.model.canvas.r_max <= 0:
        cfg.model.canvas.r_max = whisper_r_max(Path(cfg.data.root), tokenizer)
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    model = Whisfusion(cfg, tokenizer, encoder, language_vocab_beside(cfg, tokenizer))
    # before any training step, not at the first validation
    model.check_options(DecodeOptions.from_config(cfg.decode))
    module = WhisfusionModule(model)
    data = WhisfusionDataModule(cfg.data, cfg.model.canvas, tokenizer, batch_size=plan.per_device)
    validation = PDDValidation(cfg.decode, cfg.validation)
    callbacks = [
        validation,
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            save_last=True,
            every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
            save_top_k=0,
            # last.ckpt is the one a resumed run reads: overwrite it, even when the preemption
            # callback wrote it (Lightning would otherwise go on in last-v1.ckpt)
            enable_version_counter=False,
        ),
        LearningRateMonitor(logging_interval="step"),
        DataStatsLogger(cfg.trainer.log_every_n_steps),
        RankAgreement(
            config_to_yaml(cfg),
            tokenizer.to_bytes(),
            train_shard_listing(cfg.data),
            plan,
            workers=cfg.data.num_workers,
        ),
    ]
    if cfg.model.decoder.attention_anneal_steps:
        callbacks.append(
            AttentionAnneal(cfg.model.decoder.attention_anneal_steps, cfg.trainer.max_steps)
        )
    if cfg.trainer.ema_decay > 0:
        callbacks.append(EMA(cfg.trainer.ema_decay))
    # after EMA: a stop checkpoint must hold this step's average
    callbacks.append(StopOnSignal(run_dir / "checkpoints" / "last.ckpt", slurm_job_id()))
    if cfg.validation.monitor:
        # keeps the checkpoint with the best validation error rate beside last.ckpt
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(run_dir / "checkpoints"),
                filename="best-{step}",
                monitor=cfg.validation.monitor,
                mode="min",
                save_top_k=1,
                auto_insert_metric_name=False,
            )
        )
    if cfg.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, cfg.trainer.log_every_n_steps // 2)))
    trainer = build_trainer(cfg, run_dir, callbacks, plan)
    resume = last_checkpoint(run_dir)
    if resume is not None:
        log.info("resuming from %s", resume)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    except TrainingStopped as stopped:
        print(f"whisfusion: {stopped}", flush=True)
        return run_dir
    if validation.report_step != trainer.global_step:  # the same on every rank
        trainer.validate(module, datamodule=data, verbose=False)
    if trainer.is_global_zero:
        print_summary(run_dir, validation, data)
    return run_dir


def print_summary(run_dir: Path, validation: PDDValidation, data) -> None:
    """What a person wants at the end of a run: scores, data counts, where things are."""
    print("\n== validation (PDD) ==")
    if validation.report is None:
        print("(no validation data)")
    else:
        print(validation.report.to_markdown())
        print(f"\n{cer_line(validation.char_report)}")
    print("\n== data (this rank; validation counts add up over every validation run) ==")
    print(data.stats().summary())
    print(f"\ncheckpoint:  {run_dir / 'checkpoints' / 'last.ckpt'}")
    print(f"config:      {run_dir / 'config.yaml'} (batch plan: batch_plan.json)")
    print(f"tensorboard: tensorboard --logdir {run_dir}")
