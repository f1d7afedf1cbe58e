"""Run bookkeeping: atomic checkpoint writes, the per-epoch CSV of train MAD, validation MAD and learning rate, and a
line a minute within long epochs."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file, then rename: a run killed mid-save never leaves a half-written checkpoint.

    Reads only as data (`boneage.training.resume`), never through Lightning's own torch.load. `loaded`: a checkpoint
    already read and checked, handed over instead of being read twice."""

    def __init__(self, loaded: tuple[Path, dict] | None = None):
        super().__init__()
        self._loaded = loaded

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        from boneage.training.resume import load_training_checkpoint

        if self._loaded is not None and Path(path) == self._loaded[0]:
            checkpoint, self._loaded = self._loaded[1], None  # not held for the rest of the run
            return checkpoint
        return load_training_checkpoint(path)

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class EpochCSV(L.Callback):
    """RUN_DIR/metrics.csv: one row per epoch. Appends on resume, so the curve of an interrupted run is whole."""

    FIELDS = ["epoch", "train_mad", "val_mad", "lr", "seconds", "train_gap"]

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
            "train_gap": f"{float(m['train_gap']):.4f}" if "train_gap" in m else "",  # with consistency
        }
        self._print(f"epoch {row['epoch']}/{trainer.max_epochs}: train MAD {row['train_mad']}, "
                    + (f"gap between the two views {row['train_gap']}, " if row["train_gap"] else "")
                    + f"val MAD {row['val_mad']}, lr {row['lr']}, {row['seconds']} s")
        new = not self.path.exists()
        # A resumed run keeps the columns its file started with (one written before train_gap existed, too).
        fields = self.FIELDS if new else self.path.open().readline().strip().split(",")
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


class Heartbeat(L.Callback):
    """Without a progress bar (a log file, a CPU run whose epoch takes most of an hour): one line every `every_s`
    seconds within an epoch, saying where it is, the rate, the running train MAD and when the epoch ends. Epochs
    shorter than `every_s` (a GPU's) print nothing more than their epoch line."""

    def __init__(self, log=print, every_s: float = 60.0):
        self._print, self.every_s = log, every_s
        self.on_train_epoch_start(None, None)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.perf_counter()
        self._loss, self._steps, self._images = None, 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()
        self._loss = loss if self._loss is None else self._loss + loss  # stays on the device: no sync per step
        self._steps, self._images = self._steps + 1, self._images + len(batch[-1])
        now = time.perf_counter()
        if now - self._last < self.every_s or not trainer.is_global_zero:
            return
        self._last, elapsed = now, now - self._start
        total = trainer.num_training_batches
        left = f", about {(total - batch_idx - 1) * elapsed / (batch_idx + 1) / 60:.0f} min to the epoch's end" \
            if isinstance(total, int) else ""
        # With consistency the loss is the MAD plus the weighted gap between each film's two views.
        what = "train loss (MAD + gap)" if getattr(getattr(pl_module, "cfg", None), "consistency", 0) else "train MAD"
        self._print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: step {batch_idx + 1}/{total}, "
                    f"{self._images / elapsed:.1f} images/s, {what} so far {float(self._loss) / self._steps:.2f}"
                    f"{left}")


class SaveLastAtEnd(L.Callback):
    """last.ckpt at the very end too, when `checkpoint_every` > 1 or a time limit stopped the run between saves."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
