"""The training system around the plain network: L1 loss (MAD) in months, Adam, the learning-rate schedule."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from boneage.config import TrainConfig, to_dict, train_config_from_dict
from boneage.data.preprocess import to_model_input
from boneage.models import create_model
from boneage.training.augment import augment, equalize_clipped_batch, film_noise, narrow_range


def prepare_batch(images: torch.Tensor, cfg: TrainConfig, train: bool) -> torch.Tensor:
    """uint8 (B, 1, S, S) already on the device -> augmented (when training), standardised float input.
    Films of a raw store (float, before the intensity normalisation) get their noise first, then the normalisation."""
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
    else:
        x = images.float()
        if train and cfg.film_narrow:
            x = narrow_range(x, cfg.film_narrow)
        if train and cfg.film_noise:
            x = film_noise(x, cfg.film_noise)
        x = equalize_clipped_batch(x, cfg.preprocess.clip_limit)
    if train:
        x = augment(x, cfg)
    x = to_model_input(x, cfg.preprocess)
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def consistency_gap(pred: torch.Tensor) -> torch.Tensor:
    """Answers (2B,), rows 2k and 2k + 1 two views of one film -> the mean |difference| within the pairs, months."""
    a, b = pred.reshape(-1, 2).unbind(1)
    return (a - b).abs().mean()


class BoneAgeModule(L.LightningModule):
    def __init__(self, config: dict):
        """`config` is `to_dict(TrainConfig)`: plain data, so checkpoints load with weights_only=True."""
        super().__init__()
        self.save_hyperparameters()
        self.cfg: TrainConfig = train_config_from_dict(config)
        self.model = create_model(self.cfg.model, in_chans=self.cfg.preprocess.channels)
        if self.cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Kept in a list so the compiled wrapper is not registered as a second copy of the weights.
        self._net = [torch.compile(self.model) if self.cfg.compile else self.model]

    def forward(self, x: torch.Tensor, male: torch.Tensor) -> torch.Tensor:
        return self._net[0](x, male)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, male, age = batch
        training = self._trainer is not None and self.trainer.training
        return prepare_batch(images, self.cfg, training), male, age

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, male, age = batch
        pred = self(x, male).float()
        loss = F.l1_loss(pred, age.float())
        self.log("train_mad", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(age), sync_dist=True)
        if self.cfg.consistency:
            gap = consistency_gap(pred)
            self.log("train_gap", gap, on_step=False, on_epoch=True, batch_size=len(age) // 2, sync_dist=True)
            loss = loss + self.cfg.consistency * gap
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, male, age = batch
        loss = F.l1_loss(self(x, male).float(), age.float())
        self.log("val_mad", loss, on_epoch=True, prog_bar=True, batch_size=len(age), sync_dist=True)

    def configure_optimizers(self):
        cfg = self.cfg
        # fused: one kernel for the whole update on GPUs, instead of a few per parameter tensor
        opt = torch.optim.Adam(self.parameters(), lr=cfg.effective_lr, weight_decay=cfg.weight_decay,
                               fused=self.device.type == "cuda")
        if cfg.schedule == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
                cooldown=cfg.plateau_cooldown, min_lr=cfg.min_lr)
            return [opt], [{"scheduler": plateau, "monitor": "val_mad", "interval": "epoch"}]

        # cosine, for a fixed budget of epochs: linear warm-up, then down to 1% of the peak
        def cosine(epoch_frac: float) -> float:
            t = min(1.0, epoch_frac / max(1, cfg.epochs))
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))

        return [opt], [{"scheduler": self._warmup_lambda(opt, cosine), "interval": "step"}]

    def _warmup_lambda(self, opt, after):
        """A per-step LambdaLR: linear warm-up over `warmup_epochs`, then `after(epoch as a float)`."""
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // max(1, self.cfg.epochs))
        warmup = round(self.cfg.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return after(step / steps_per_epoch)

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What the predictor needs, in plain types, under one key it reads without Lightning.
        checkpoint["boneage"] = {"format": 1, "config": to_dict(self.cfg)}
