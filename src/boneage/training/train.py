"""`boneage train`, top to bottom: settings -> data -> model -> trainer -> fit -> curves.

RUN_DIR holds everything needed to reproduce or continue the run: config.json, train.csv / val.csv (the split),
metrics.csv (one row per epoch), best.ckpt (lowest validation MAD), last.ckpt (for --resume), curves.png.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from boneage.config import MAX_IMAGE_SIZE, TrainConfig, read_json, to_dict, train_config_from_dict
from boneage.data.split import save_split
from boneage.errors import UserError
from boneage.lock import held
from boneage.models import trunk_spec
from boneage.training.callbacks import AtomicCheckpointIO, EpochCSV, Heartbeat, SaveLastAtEnd
from boneage.training.datamodule import BoneAgeData
from boneage.training.module import BoneAgeModule
from boneage.training.resume import epochs_done, load_training_checkpoint

CPUINFO = Path("/proc/cpuinfo")


def cpu_has_bf16_units() -> bool:
    """True on CPUs with bf16 instructions that oneDNN uses for convolutions: AMX tiles (Intel Sapphire Rapids and
    later: the Inception v3 training step 2.5-3x faster than in float32) or AVX-512 BF16 (AMD Zen 4 and later, Intel
    Cooper Lake: 1.9x, docs/benchmarks.md). Without either, bf16 is emulated and slower, so not the default."""
    try:
        flags = CPUINFO.read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(cfg: TrainConfig) -> str:
    """The explicit setting; else bf16-mixed on GPUs that have bf16 and on CPUs with bf16 units; else 32-true."""
    if cfg.precision:
        return cfg.precision
    gpu = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    if gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_bf16_units() else "32-true"


def _is_extra_process() -> bool:
    """True in the processes a multi-GPU or multi-node run launches besides the first: they share its lock."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextlib.contextmanager
def _run_dir_lock(out: Path, create: bool):
    """Hold RUN_DIR/.lock (flock) while training: two runs into one folder would interleave metrics.csv and leave
    the config of one next to the checkpoints of the other. The kernel drops the lock if the process dies."""
    if _is_extra_process() or (not create and not out.is_dir()):
        yield
        return
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot make the run folder ({exc.strerror or exc})") from None
    try:
        with held(out / ".lock", f"{out}: another training is running in this folder (it holds {out / '.lock'}); "
                  "wait for it to end or choose another --out"):
            yield
    except UserError:
        if made and {p.name for p in out.iterdir()} <= {".lock"}:  # a refused run leaves no folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _processes(cfg: TrainConfig) -> int:
    """How many training processes Lightning will start, or one line why it could not start them."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = None if cfg.devices == "auto" else int(cfg.devices)
    if cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and gpus):
        if not gpus:
            raise UserError(f"config: accelerator {cfg.accelerator}: no CUDA GPU on this machine")
        if wanted is not None and wanted > gpus:
            raise UserError(f"config: devices {wanted}: this machine has {gpus} GPU(s)")
        return (wanted or gpus) * cfg.num_nodes
    if cfg.accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("config: accelerator mps: no Apple GPU on this machine")
        return 1
    cores = os.cpu_count() or 1
    if wanted is not None and wanted > cores:
        raise UserError(f"config: devices {wanted}: more training processes than this machine's {cores} CPU cores")
    return (wanted or 1) * cfg.num_nodes


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not a run folder; choose another --out")
    if not resume and (out / "metrics.csv").exists():
        raise UserError(f"{out}: already holds a run; use --resume to continue it or choose another --out")


def _check_split(cfg: TrainConfig, train: list, val: list, processes: int) -> None:
    """Enough films for the run: a 1-film training set breaks batch norm, an empty validation set the schedule, and
    DDP processes that each get less than a batch train nothing at all."""
    if len(train) < 2 or not val:
        raise UserError(f"{cfg.labels}: {len(train) + len(val)} usable film(s) leave {len(train)} to train on and "
                        f"{len(val)} to validate; at least 2 and 1 are needed")
    if processes > 1 and len(train) // processes < cfg.batch_size:
        raise UserError(f"config: devices {cfg.devices}: {len(train)} training films over {processes} processes "
                        f"leave fewer than a batch ({cfg.batch_size}) each; use fewer devices or a smaller batch")


def _validate(cfg: TrainConfig, where: str = "config") -> None:
    """The settings alone (config), then what the architecture takes (the model registry, which config cannot
    import)."""
    cfg.validate(where)
    least, size = trunk_spec(cfg.model.arch).min_size, cfg.preprocess.image_size
    if size < least:
        raise UserError(f"{where}: image_size {size} is out of range: {cfg.model.arch} takes {least} to "
                        f"{MAX_IMAGE_SIZE} pixels")


def run(cfg: TrainConfig, resume: bool = False, log=print) -> Path:
    """Train; returns the path of best.ckpt. Refused while another training holds the same run folder."""
    if not resume and (not cfg.images or not cfg.labels):
        raise UserError("train needs --images DIR and --labels CSV")
    # Everything that can be checked before the run folder is made: a refused setting leaves nothing behind.
    _validate(cfg)
    _check_out(Path(cfg.out), resume)
    _processes(cfg)
    averaging = _weight_average(cfg)
    if _is_extra_process():  # the processes DDP launches besides the first train quietly: one log per run
        log = lambda message: None  # noqa: E731
    with _run_dir_lock(Path(cfg.out), create=not resume):
        return _train(cfg, resume, log, averaging)


def _train(cfg: TrainConfig, resume: bool, log, averaging: list) -> Path:
    out = Path(cfg.out)
    last = out / "last.ckpt"
    checkpoint = None
    if resume:
        if not last.is_file():
            raise UserError(f"{last}: nothing to resume (no last.ckpt in {out})")
        checkpoint = load_training_checkpoint(last)
        if cfg.epochs < epochs_done(checkpoint):
            raise UserError(f"--epochs {cfg.epochs}: the run in {out} has done {epochs_done(checkpoint)} epochs "
                            "already; give more to extend it")
    _check_out(out, resume)  # again, now that the folder is ours
    _validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")  # TF32 on GPUs that have it

    data = BoneAgeData(cfg, log=log)
    train, val = data.load_split(save=False)
    _check_split(cfg, train, val, _processes(cfg))
    save_split(train, val, out)
    init = _initial_weights(cfg) if cfg.init_from and not resume else None
    if init is not None:  # a warm restart keeps the label scale its head was trained with
        cfg.model = replace(cfg.model, age_mean=init[1].age_mean, age_std=init[1].age_std)
    elif not resume:
        mean, std = data.age_stats
        cfg.model = replace(cfg.model, age_mean=round(mean, 2), age_std=round(std, 2))
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    log(f"{len(train)} training / {len(val)} validation images; {cfg.model.arch} at {cfg.preprocess.image_size} px; "
        f"lr {cfg.effective_lr:.3g}, batch {cfg.batch_size}, {cfg.epochs} epochs"
        + (f"; validated on the weights' moving average (decay {cfg.ema_decay:g})" if cfg.ema_decay else "")
        + (f"; each film as two views, their gap weighted {cfg.consistency:g}" if cfg.consistency else ""))

    module = BoneAgeModule(to_dict(cfg))
    if init is not None:
        module.model.load_state_dict(init[0])
        log(f"starting from the weights of {cfg.init_from}")
    interactive = sys.stderr.isatty()  # a progress bar for people; one line per epoch for logs
    # With a weight average, only a full save puts the average (the weights validated) into best.ckpt's state_dict.
    best = ModelCheckpoint(dirpath=out, filename="best", monitor="val_mad", mode="min", save_top_k=1,
                           save_weights_only=not cfg.ema_decay, enable_version_counter=False,
                           auto_insert_metric_name=False)
    latest = ModelCheckpoint(dirpath=out, filename="last", every_n_epochs=cfg.checkpoint_every, save_top_k=1,
                             enable_version_counter=False)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no banners and tips
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices if cfg.devices == "auto" else int(cfg.devices),
        num_nodes=cfg.num_nodes, precision=resolve_precision(cfg), max_epochs=cfg.epochs,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        callbacks=[best, latest, EpochCSV(out / "metrics.csv", log), SaveLastAtEnd(last)] + averaging
        + ([TQDMProgressBar(refresh_rate=10)] if interactive else [Heartbeat(log)]),
        enable_progress_bar=interactive,
        plugins=[AtomicCheckpointIO(loaded=(last, checkpoint) if checkpoint else None)], logger=False,
        default_root_dir=out, use_distributed_sampler=False,
        num_sanity_val_steps=0, benchmark=True, enable_model_summary=False,
    )
    log(f"device {trainer.strategy.root_device}, precision {trainer.precision}, {trainer.world_size} process(es)")
    with warnings.catch_warnings():
        # Expected here, and noise to a reader: batches are cut from one tensor (no workers needed), the run folder
        # holds the split before the first checkpoint, and the module (not the datamodule) owns the batch transfer.
        for message in (".*does not have many workers.*", ".*Checkpoint directory.*exists and is not empty.*",
                        ".*overridden `on_after_batch_transfer`.*", ".*LeafSpec.*"):
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)

    if trainer.is_global_zero:
        from boneage.evaluation.figures import plot_curves

        plot_curves(out / "metrics.csv", out / "curves.png")
        if best.best_model_score is not None:
            log(f"best validation MAD {float(best.best_model_score):.2f} months -> {out / 'best.ckpt'}")
    return out / "best.ckpt"


def _weight_average(cfg: TrainConfig) -> list:
    """Lightning's weight averaging as an EMA (`ema_decay`), listed after SaveLastAtEnd so that the last checkpoint
    keeps the weights themselves to resume from before the average replaces them at the end."""
    if not cfg.ema_decay:
        return []
    try:
        from lightning.pytorch.callbacks import WeightAveraging
    except ImportError:  # Lightning < 2.6
        raise UserError("config: ema_decay needs lightning 2.6 or later (pip install -U lightning)") from None
    from torch.optim.swa_utils import get_ema_avg_fn

    return [WeightAveraging(avg_fn=get_ema_avg_fn(cfg.ema_decay))]


def _initial_weights(cfg: TrainConfig):
    """(state dict, its ModelConfig) of `cfg.init_from`, which must be the same network as `cfg.model`."""
    from boneage.inference.checkpoint import load_network

    model, spec, _ = load_network(cfg.init_from)
    if spec.model.arch != cfg.model.arch or tuple(spec.model.hidden) != tuple(cfg.model.hidden) \
            or spec.model.sex_units != cfg.model.sex_units:
        raise UserError(f"{cfg.init_from}: a {spec.model.arch} {spec.model.hidden}; this run trains a "
                        f"{cfg.model.arch} {cfg.model.hidden}: --init-from needs the same network")
    if spec.preprocess.channels != cfg.preprocess.channels:
        raise UserError(f"{cfg.init_from}: takes {spec.preprocess.channels}-channel input, this run "
                        f"{cfg.preprocess.channels}")
    return model.state_dict(), spec.model


def config_for_resume(out: str | os.PathLike, epochs: int | None) -> TrainConfig:
    """The run's own saved config; only the number of epochs may be raised to extend it."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: no saved config to resume from")
    cfg = train_config_from_dict(read_json(path), str(path))
    cfg.out = str(out)  # the folder given, not the one saved: a copied run must not train its original
    _validate(cfg, str(path))
    if epochs is not None:
        cfg.epochs = epochs
    return cfg
