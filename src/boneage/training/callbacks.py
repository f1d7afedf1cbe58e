"""Run bookkeeping: atomic checkpoint writes and the per-epoch CSV of train MAD, validation MAD and learning rate."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file, then rename: a run killed mid-save never leaves a half-written checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class EpochCSV(L.Callback):
    """RUN_DIR/metrics.csv: one row per epoch. Appends on resume, so the curve of an interrupted run is whole."""

    FIELDS = ["epoch", "train_mad", "val_mad", "lr", "seconds"]

    def __init__(self, path: Path, log=print):
        self.path, self._print = path, log
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch + 1,
            "train_mad": f"{float(m['train_mad']):.4f}" if "train_mad" in m else "",
            "val_mad": f"{float(m['val_mad']):.4f}" if "val_mad" in m else "",
            "lr": f"{trainer.optimizers[0].param_groups[0]['lr']:.3g}",
            "seconds": f"{time.perf_counter() - self._start:.1f}",
        }
        self._print(f"epoch {row['epoch']}/{trainer.max_epochs}: train MAD {row['train_mad']}, "
                    f"val MAD {row['val_mad']}, lr {row['lr']}, {row['seconds']} s")
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)


class SaveLastAtEnd(L.Callback):
    """last.ckpt at the very end too, when `checkpoint_every` > 1 or a time limit stopped the run between saves."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
