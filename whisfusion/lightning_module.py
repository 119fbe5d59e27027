"""`WhisfusionModule`: one training step = frozen features -> corrupt -> denoise -> loss."""

from __future__ import annotations

import time
import zlib

import lightning as L
import torch

from whisfusion.callbacks.nonfinite import NonFiniteGuard, gradient_norm
from whisfusion.checkpoint import CHECKPOINT_KEY, payload
from whisfusion.config import RunConfig
from whisfusion.data.feature_cache import FeatureCache
from whisfusion.data.samples import HOST_LENGTHS
from whisfusion.encoder.windows import trim_to_audio
from whisfusion.model import Whisfusion
from whisfusion.optim import build_optimizer
from whisfusion.precision import resolve_dtype
from whisfusion.schedule import MaskSchedule, diffusion_loss
from whisfusion.seeding import mixed_seed

# Last key of the seed of the global RNG (dropout), apart from every micro-batch's mask seed.
DROPOUT_STREAM = 1 << 32


class WhisfusionModule(L.LightningModule):
    """Trains the decoder of a `Whisfusion` model; the encoder stays frozen and out of the
    optimizer and the checkpoint.

    Batches (see `whisfusion.data`) hold `tokens` (B, L) target canvases and `canvas_valid`
    (B, L), plus either `audio` (B, S) / `audio_lens` (B,) or precomputed `features` (B, T, E) /
    `feature_valid` (B, T).
    """

    def __init__(self, model: Whisfusion):
        super().__init__()
        self.model = model
        self.cfg: RunConfig = model.cfg
        self.schedule = MaskSchedule(self.cfg.model.schedule, model.tokenizer.eos_id)
        self._feature_cache: FeatureCache | None = None
        self._step_started = time.perf_counter()
        self.nonfinite = NonFiniteGuard(self.cfg.trainer.max_nonfinite_in_row)
        # (optimizer step, micro-batch index) of the latest training micro-batch
        self._micro = (-1, 0)

    @property
    def encoder_dtype(self) -> torch.dtype:
        """The precision the encoder runs in: the one inference will use (`decode.dtype` on
        this device), so the decoder trains on the features it will later read."""
        return resolve_dtype(self.cfg.decode.dtype, self.device)

    @property
    def feature_cache(self) -> FeatureCache | None:
        """The feature cache (`data.feature_cache`), filed under the encoder's key for this
        device's precision; opened on first use, once the module is on its device."""
        cache_dir = self.cfg.data.feature_cache
        if cache_dir and self._feature_cache is None:
            key = self.model.encoder.feature_key(self.encoder_dtype)
            self._feature_cache = FeatureCache(cache_dir, key)
        return self._feature_cache

    def features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, E) encoder output and (B, T) validity: from batch, cache or encoder.

        Encoder output is cut to the batch's longest clip (`trim_to_audio`): with the 30 s
        window, cross-attention would otherwise read up to 1500 frames of which most are masked.
        """
        if "features" in batch:
            return batch["features"], batch["feature_valid"]
        if self.feature_cache is None:
            lens = batch["audio_lens"]
            if HOST_LENGTHS in batch:  # the same lengths, without a device-to-host wait
                lens = torch.tensor(batch[HOST_LENGTHS], dtype=torch.long)
            feats, valid = self.model.encode(batch["audio"], lens, self.encoder_dtype)
            return trim_to_audio(feats, valid, batch["audio"].shape[1])
        return self._cached_features(batch)

    def _cached_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode only the utterances the cache lacks; store their valid frames.

        Exact: an utterance's features do not depend on its batch (see FrozenWhisperEncoder),
        and the decoder ignores frames outside `valid`, so keeping only valid frames loses
        nothing. Entries are keyed by utterance id and a checksum of its audio, so a corpus
        rebuilt under the same ids never reads stale features. Augmented rows (`augmented`)
        bypass the cache.
        """
        audio, lens = batch["audio"], batch["audio_lens"]
        augmented = batch.get("augmented", torch.zeros(len(lens), dtype=torch.bool)).tolist()
        # cache keys by row; augmented audio is drawn anew each time it is read: encoded, never
        # looked up or stored
        keys = {
            i: f"{utt_id}-{zlib.crc32(audio[i, : lens[i]].cpu().numpy().tobytes()):08x}"
            for i, utt_id in enumerate(batch["ids"])
            if not augmented[i]
        }
        found: list[torch.Tensor | None] = [None] * len(augmented)
        for i, f in zip(keys, self.feature_cache.get(list(keys.values())), strict=True):
            found[i] = f
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            rows = torch.tensor(missing, device=audio.device)
            feats, valid = self.model.encode(audio[rows], lens[rows], self.encoder_dtype)
            # rounded as stored, so a first-seen utterance looks like a cached one
            fresh = [feats[j][valid[j]].to(torch.float16) for j in range(len(missing))]
            stored = [j for j, i in enumerate(missing) if i in keys]
            self.feature_cache.put([keys[missing[j]] for j in stored], [fresh[j] for j in stored])
            for j, i in enumerate(missing):
                found[i] = fresh[j]
        lengths = torch.tensor([len(f) for f in found])
        out = torch.zeros(len(found), int(lengths.max()), found[0].shape[1], device=self.device)
        for i, f in enumerate(found):
            out[i, : len(f)] = f.to(self.device, torch.float32)
        return out, (torch.arange(out.shape[1])[None, :] < lengths[:, None]).to(self.device)

    def _generator(self) -> torch.Generator:
        """The mask generator of this micro-batch, on the model's device.

        Seeded by (seed, rank, optimizer step, micro-batch of the step): a resumed run (which
        starts at a step boundary) draws what the uninterrupted run would have, and the
        micro-batches of one accumulated step draw different masks.
        """
        step = self.global_step
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        seed = mixed_seed(self.cfg.trainer.seed, self.global_rank, step, micro)
        return torch.Generator(self.device).manual_seed(seed)

    def loss(self, batch: dict, step: int, generator: torch.Generator | None = None, features=None):
        """Training loss of a batch, its parts by name (for logging) and its corruption.

        The loss is the diffusion loss, plus the model's auxiliary losses (the alignment
        prior's CTC loss) times their weights.
        """
        feats, valid = features if features is not None else self.features(batch)
        cache = self.model.cross_cache(feats, valid)
        tokens, canvas_valid = batch["tokens"], batch["canvas_valid"]
        corr = self.schedule.corrupt(
            tokens, canvas_valid, self.model.decoder.mask_id, step, generator
        )
        # the loss reads the masked positions only: the output layer runs there alone
        logits = self.model.decoder(corr.x_t, cache, canvas_valid, corr.weights > 0)
        parts = {"diffusion_loss": diffusion_loss(logits, tokens, corr.weights)}
        loss = parts["diffusion_loss"]
        auxiliary = self.model.auxiliary_losses(cache, tokens, canvas_valid)
        for name, (value, weight) in auxiliary.items():
            parts[name] = value
            loss = loss + weight * value
        return loss, parts, corr

    def training_step(self, batch: dict, batch_idx: int):
        # A non-finite loss is not looked at here (that would wait for the device): its
        # gradients are non-finite too, and `on_before_optimizer_step` drops that update.
        loss, parts, corr = self.loss(batch, self.global_step, self._generator())
        now = time.perf_counter()
        elapsed, self._step_started = now - self._step_started, now
        tokens = batch["canvas_valid"].sum()
        masked_share = corr.masked.sum() / batch["canvas_valid"].sum().clamp(min=1)
        bs = batch["tokens"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self._log_parts("train", parts, bs)
        self.log("train/mask_ratio", masked_share, batch_size=bs)
        self.log("train/high_mask_share", corr.high.float().mean(), batch_size=bs)
        if self.cfg.model.schedule.block_share > 0:
            self.log("train/block_share", corr.block.float().mean(), batch_size=bs)
        self.log("train/tokens_per_s", tokens / max(elapsed, 1e-9), batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        """Validation loss; the features go on to the PDD validation callback for decoding."""
        feats, valid = self.features(batch)
        # A fixed seed per batch so the validation loss is comparable between evaluations.
        gen = torch.Generator(self.device).manual_seed(self.cfg.trainer.seed + batch_idx)
        loss, parts, _ = self.loss(batch, self.global_step, gen, features=(feats, valid))
        bs = batch["tokens"].shape[0]
        self.log("val/loss", loss, batch_size=bs, sync_dist=True)
        self._log_parts("val", parts, bs, sync_dist=True)
        return {"loss": loss, "features": feats, "feature_valid": valid}

    def _log_parts(self, prefix: str, parts: dict, batch_size: int, **kwargs) -> None:
        """Log each part of a loss made of several (a lone part is the loss itself)."""
        if len(parts) > 1:
            for name, value in parts.items():
                self.log(f"{prefix}/{name}", value, batch_size=batch_size, **kwargs)

    def configure_optimizers(self):
        opt, sched = build_optimizer(self.model.decoder, self.cfg.optim, self.cfg.trainer.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        # A step with a non-finite loss changes nothing: AdamW skips parameters without a
        # gradient (see whisfusion.callbacks.nonfinite). DDP has already averaged the gradients,
        # so every rank sees the same norm and takes the same branch without a collective; the
        # one host read is per optimizer step, not per micro-batch. Under 16-mixed the gradient
        # scaler skips overflowing steps itself (and lowers its scale): not counted here.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None and not torch.isfinite(gradient_norm(self.model.decoder)):
            self.nonfinite.flag()
        if self.nonfinite.finish_step(self.global_step):
            optimizer.zero_grad(set_to_none=True)
        self.log("train/nonfinite_skipped", float(self.nonfinite.skipped))

    def on_fit_start(self) -> None:
        if self.device.type == "cuda":
            # The frozen encoder runs under bf16 autocast on CUDA (FrozenWhisperEncoder.encode);
            # stored in bf16, its weights are cast once here instead of at every forward.
            self.model.encoder.to(torch.bfloat16)

    def on_train_start(self) -> None:
        # The global RNG (dropout) follows (seed, rank, step) like the masks: a resumed run
        # does not repeat the draws of the run it continues.
        seed = self.cfg.trainer.seed
        torch.manual_seed(mixed_seed(seed, self.global_rank, self.global_step, DROPOUT_STREAM))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = payload(self.model)
        checkpoint["nonfinite"] = self.nonfinite.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "nonfinite" in checkpoint:
            self.nonfinite.load_state_dict(checkpoint["nonfinite"])
