"""Training end to end on generated images: it learns, it saves what a run must hold, it resumes, it reloads."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from boneage.config import train_config_from_dict
from boneage.data.labels import read_labels
from boneage.errors import UserError
from boneage.training.train import config_for_resume, run
from tests.conftest import run_cli


def _constant_mad(labels_csv, images) -> float:
    ages = np.array([r.age_months for r in read_labels(labels_csv, images).rows])
    return float(np.mean(np.abs(ages - np.median(ages))))  # the best any constant can do


def test_a_small_model_learns_the_generated_age_signal(trained, synthetic):
    images, _ = synthetic
    val = trained / "val.csv"
    baseline = _constant_mad(val, images)
    result = run_cli("evaluate", "--model", trained / "best.ckpt", "--images", images, "--labels", val, "--json",
                     "--workers", "0")
    assert result.returncode == 0, result.stderr
    mad = json.loads(result.stdout)["mad_months"]
    assert mad < 0.5 * baseline, f"MAD {mad:.1f} vs constant {baseline:.1f}"


def test_noise_before_the_normalisation_trains_from_a_raw_store(synthetic, tmp_path):
    from boneage.config import ModelConfig, Preprocess, TrainConfig

    images, labels = synthetic
    cfg = TrainConfig(images=str(images), labels=str(labels), out=str(tmp_path / "r"), limit=64, film_noise=3.0,
                      film_narrow=0.5, model=ModelConfig(arch="tiny_cnn"),
                      preprocess=Preprocess(image_size=32, clip_limit=3.0), epochs=1, batch_size=16,
                      cache_dir=str(tmp_path / "cache"), precision="32-true")
    run(cfg, log=lambda m: None)
    assert len(list(csv.DictReader((tmp_path / "r" / "metrics.csv").open()))) == 1
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["film_noise"] == 3.0 and saved["film_narrow"] == 0.5
    with pytest.raises(UserError, match="film_narrow narrows films for film_noise"):
        train_config_from_dict({**saved, "film_noise": 0}).validate()
    with pytest.raises(UserError, match="film_narrow is a share of films, at most 1"):
        train_config_from_dict({**saved, "film_narrow": 2}).validate()
    stores = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert [s["raw"] for s in stores] == [True]
    with pytest.raises(UserError, match="film_noise needs intensity 'equalize'"):
        train_config_from_dict({**json.loads((tmp_path / "r" / "config.json").read_text()),
                                "preprocess": {"intensity": "equalize", "clip_limit": 0}}).validate()


def test_framings_train_on_each_film_as_is_and_framed_before_the_crop(synthetic, tmp_path):
    from boneage.config import ModelConfig, Preprocess, TrainConfig
    from boneage.training.datamodule import BoneAgeData

    images, labels = synthetic
    cfg = TrainConfig(images=str(images), labels=str(labels), out=str(tmp_path / "r"), limit=48, framings=2,
                      model=ModelConfig(arch="tiny_cnn"), preprocess=Preprocess(image_size=32, crop="hand"),
                      epochs=1, batch_size=16, cache_dir=str(tmp_path / "cache"), precision="32-true")
    data = BoneAgeData(cfg, log=lambda m: None)
    train, val = data.load_split(save=False)
    assert data.train_set.images.shape == (3, len(train), 32, 32) and data.val_set.images.ndim == 3
    batch = data.train_set[list(range(len(train)))][0]
    drawn = [(batch[n, 0] == data.train_set.images[:, n]).flatten(1).all(1).nonzero() for n in range(len(train))]
    assert len({int(d[0]) for d in drawn if len(d)}) > 1  # samples are drawn from several versions
    run(cfg, log=lambda m: None)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["framings"] == 2
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3  # the films as is, and two framed versions


def test_consistency_trains_each_film_as_two_views_and_records_their_gap(synthetic, tmp_path):
    import torch

    from boneage.config import ModelConfig, Preprocess, TrainConfig
    from boneage.training.datamodule import BoneAgeData
    from boneage.training.module import consistency_gap

    assert consistency_gap(torch.tensor([10.0, 14.0, 7.0, 7.0])) == 2.0  # pairs (10, 14) and (7, 7)
    images, labels = synthetic
    cfg = TrainConfig(images=str(images), labels=str(labels), out=str(tmp_path / "r"), limit=96, framings=1,
                      consistency=1.0, model=ModelConfig(arch="tiny_cnn"), preprocess=Preprocess(image_size=32),
                      epochs=3, batch_size=16, lr=3e-3, cache_dir=str(tmp_path / "cache"), precision="32-true")
    data = BoneAgeData(cfg, log=lambda m: None)
    train, _ = data.load_split(save=False)
    loader = iter(data.train_dataloader())
    batches = [next(loader) for _ in range(4)]
    images_, male, age = batches[0]
    assert len(age) == 16 and torch.equal(age[0::2], age[1::2]) and torch.equal(male[0::2], male[1::2])
    # each copy draws its own version: somewhere a pair is the film as is and its framing
    assert any(not torch.equal(b[0][0::2], b[0][1::2]) for b in batches)
    assert len(data.train_dataloader()) == len(train) // 8  # an epoch is every film once, as a pair
    run(cfg, log=lambda m: None)
    gaps = [float(r["train_gap"]) for r in csv.DictReader((tmp_path / "r" / "metrics.csv").open())]
    assert len(gaps) == 3 and all(g > 0 for g in gaps)
    with pytest.raises(UserError, match="batch_size must be even"):
        TrainConfig(images=str(images), labels=str(labels), consistency=1.0, batch_size=15).validate()


def test_a_run_folder_holds_config_split_metrics_checkpoints_and_curves(trained):
    for name in ("config.json", "train.csv", "val.csv", "metrics.csv", "best.ckpt", "last.ckpt", "curves.png"):
        assert (trained / name).is_file(), name
    cfg = train_config_from_dict(json.loads((trained / "config.json").read_text()))
    assert cfg.model.arch == "tiny_cnn" and cfg.preprocess.image_size == 64
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert len(rows) == cfg.epochs and {"train_mad", "val_mad", "lr"} <= set(rows[0])
    train_ids = {r["id"] for r in csv.DictReader((trained / "train.csv").open())}
    val_ids = {r["id"] for r in csv.DictReader((trained / "val.csv").open())}
    assert not train_ids & val_ids and len(val_ids) == round(0.2 * (len(train_ids) + len(val_ids)))


def test_resume_continues_the_interrupted_run(synthetic, tmp_path):
    from boneage.config import ModelConfig, Preprocess, TrainConfig

    images, labels = synthetic
    cfg = TrainConfig(images=str(images), labels=str(labels), out=str(tmp_path / "r"), limit=96,
                      model=ModelConfig(arch="tiny_cnn"), preprocess=Preprocess(image_size=32), epochs=2,
                      batch_size=32, cache_dir=str(tmp_path / "cache"))
    run(cfg, log=lambda m: None)
    with pytest.raises(UserError, match="already holds a run"):
        run(cfg, log=lambda m: None)
    run(config_for_resume(tmp_path / "r", epochs=3), resume=True, log=lambda m: None)
    epochs = [int(r["epoch"]) for r in csv.DictReader((tmp_path / "r" / "metrics.csv").open())]
    assert epochs == [1, 2, 3]
    assert not list((tmp_path / "r").glob("*.tmp"))  # atomic writes leave nothing half-written


def test_a_weight_average_is_what_is_validated_saved_as_best_and_resumed(synthetic, tmp_path):
    import lightning as L
    import torch

    from boneage.config import ModelConfig, Preprocess, TrainConfig
    from boneage.inference.checkpoint import load_network
    from boneage.training.datamodule import BoneAgeData
    from boneage.training.module import BoneAgeModule

    images, labels = synthetic
    cfg = TrainConfig(images=str(images), labels=str(labels), out=str(tmp_path / "r"), limit=96, ema_decay=0.9,
                      model=ModelConfig(arch="tiny_cnn"), preprocess=Preprocess(image_size=32), epochs=2,
                      batch_size=16, lr=3e-3, cache_dir=str(tmp_path / "cache"), precision="32-true")
    run(cfg, log=lambda m: None)
    ckpt = torch.load(tmp_path / "r" / "best.ckpt", map_location="cpu", weights_only=True)
    average, weights = ckpt["state_dict"], ckpt["current_model_state"]
    assert any(not torch.equal(average[k], weights[k]) for k in average)

    def val_mad(state: dict) -> float:
        module = BoneAgeModule(ckpt["hyper_parameters"]["config"])
        module.load_state_dict(state)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        return trainer.validate(module, datamodule=BoneAgeData(cfg, log=lambda m: None), verbose=False)[0]["val_mad"]

    rows = list(csv.DictReader((tmp_path / "r" / "metrics.csv").open()))
    best = min(float(r["val_mad"]) for r in rows)
    assert val_mad(average) == pytest.approx(best, abs=1e-3)  # the average is what was scored and kept
    assert val_mad(weights) != pytest.approx(best, abs=1e-3)
    network = load_network(tmp_path / "r" / "best.ckpt")[0].state_dict()
    assert all(torch.equal(network[k], average[f"model.{k}"]) for k in network)  # and what inference reads
    run(config_for_resume(tmp_path / "r", epochs=3), resume=True, log=lambda m: None)
    assert [int(r["epoch"]) for r in csv.DictReader((tmp_path / "r" / "metrics.csv").open())] == [1, 2, 3]
    with pytest.raises(UserError, match="ema_decay must be below 1"):
        run(TrainConfig(images=str(images), labels=str(labels), out=str(tmp_path / "x"), ema_decay=1.0),
            log=lambda m: None)


def test_a_reloaded_checkpoint_predicts_the_same_numbers_in_a_new_process(trained, synthetic):
    import boneage

    images, _ = synthetic
    files = sorted(images.iterdir())[:4]
    model = boneage.load_model(trained / "best.ckpt", runtime="torch")
    here = [boneage.assess(f, "M", model=model, check=False).bone_age_months for f in files]
    result = run_cli("predict", *files, "--sex", "M", "--model", trained / "best.ckpt", "--json", "--no-checks")
    assert result.returncode == 0, result.stderr
    there = [json.loads(line)["bone_age_months"] for line in result.stdout.splitlines()]
    assert there == pytest.approx(here, abs=0.01)


def test_training_checkpoint_loads_with_weights_only(trained):
    import torch

    ckpt = torch.load(trained / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["boneage"]["config"]["model"]["arch"] == "tiny_cnn"


def test_contrast_gamma_and_shift_barely_move_predictions(trained, synthetic):
    """The same films stored differently get nearly the same bone age (by far less than the model's MAD)."""
    from boneage.data.images import decode_image
    from boneage.inference.predictor import TorchPredictor

    images, labels = synthetic
    predictor = TorchPredictor.load(trained / "best.ckpt")
    grays = [decode_image(p) for p in sorted(images.iterdir())[:24]]
    male = [True] * len(grays)
    truth = {r.image.name: r.age_months for r in read_labels(labels, images).rows}
    base = predictor.predict_batch(np.stack([predictor.model_input(g) for g in grays]), male)
    mad = np.mean(np.abs(base - [truth[p.name] for p in sorted(images.iterdir())[:24]]))
    for change in (lambda g: g * 0.5, lambda g: np.clip(g + 30, 0, 255), lambda g: 255 * (g / 255) ** 0.7):
        moved = predictor.predict_batch(np.stack([predictor.model_input(change(g)) for g in grays]), male)
        assert np.mean(np.abs(moved - base)) < 0.2 * max(mad, 1.0)


def test_every_shipped_recipe_is_a_valid_configuration():
    """A typo in a recipe would only show on a GPU machine, where minutes are scarce: catch it here."""
    from boneage.config import read_json, train_config_from_dict

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.json"))
    assert recipes
    for path in recipes:
        train_config_from_dict(read_json(path)).validate()


def test_heartbeat_says_where_a_long_epoch_is_without_syncing_every_step():
    from types import SimpleNamespace

    import torch

    from boneage.training.callbacks import Heartbeat

    lines = []
    beat = Heartbeat(lines.append, every_s=3600)
    trainer = SimpleNamespace(is_global_zero=True, num_training_batches=10, current_epoch=0, max_epochs=2)
    beat.on_train_epoch_start(trainer, None)
    batch = (torch.zeros(4, 1, 8, 8), torch.zeros(4), torch.zeros(4))
    for i, loss in enumerate([3.0, 5.0]):
        beat.on_train_batch_end(trainer, None, torch.tensor(loss), batch, i)
    assert lines == []  # under a minute (here an hour): nothing
    beat.every_s = 0
    beat.on_train_batch_end(trainer, None, {"loss": torch.tensor(7.0)}, batch, 2)
    assert len(lines) == 1 and lines[0].startswith("epoch 1/2: step 3/10, ")
    assert "train MAD so far 5.00" in lines[0] and "to the epoch's end" in lines[0]
    beat.on_train_epoch_start(trainer, None)  # a new epoch starts its own running mean
    beat.on_train_batch_end(trainer, None, torch.tensor(1.0), batch, 0)
    assert "train MAD so far 1.00" in lines[-1]
    paired = SimpleNamespace(cfg=SimpleNamespace(consistency=1.0))  # the loss is no longer the MAD alone
    beat.on_train_batch_end(trainer, paired, torch.tensor(3.0), batch, 1)
    assert "train loss (MAD + gap) so far 2.00" in lines[-1]


@pytest.mark.slow
def test_two_processes_train_one_model_with_ddp_on_the_cpu(synthetic, tmp_path):
    """The scale path: Lightning's DDP (gloo on the CPU, NCCL on GPUs) launches the second process itself."""
    images, labels = synthetic
    out = tmp_path / "ddp"
    done = run_cli("train", "--images", images, "--labels", labels, "--out", out, "--arch", "tiny_cnn",
                   "--image-size", "32", "--limit", "128", "--epochs", "2", "--batch-size", "16",
                   "--accelerator", "cpu", "--devices", "2", "--cache-dir", tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert "2 process(es)" in done.stderr and "MEMBER: 2/2" in done.stderr
    assert done.stderr.count("usable rows") == 1  # the second process trains quietly: one log, not two
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(np.isfinite(float(r["val_mad"])) for r in rows)
    assert (out / "best.ckpt").is_file()


@pytest.mark.parametrize("flags, accelerator, expected", [
    ("fpu avx512_bf16 amx_bf16 amx_tile", "cpu", "bf16-mixed"),
    ("fpu avx2 avx512f", "cpu", "32-true"),
    ("fpu avx512_bf16 amx_bf16", "auto", "bf16-mixed"),
    ("fpu avx512f avx512_bf16", "cpu", "bf16-mixed"),  # AMD Zen 4: no AMX, bf16 dot products
])
def test_cpus_with_bf16_units_train_in_bf16_by_default(monkeypatch, tmp_path, flags, accelerator, expected):
    import boneage.training.train as train
    from boneage.config import TrainConfig

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
    monkeypatch.setattr(train, "CPUINFO", cpuinfo)
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    assert train.resolve_precision(TrainConfig(accelerator=accelerator)) == expected
    assert train.resolve_precision(TrainConfig(accelerator=accelerator, precision="32-true")) == "32-true"


def test_recipe_flags_and_defaults_merge_in_one_place():
    """Flags land in the group that holds them, found from the dataclasses (a new preprocessing setting needs no
    list kept by hand); the recipe keeps what the flags leave alone; without an out, the run folder is runs/ARCH."""
    from boneage.config import train_config

    recipe = {"epochs": 7, "preprocess": {"image_size": 128, "intensity": "percentile"}, "model": {"hidden": [64]}}
    cfg = train_config(recipe, {"arch": "tiny_cnn", "clip_limit": 2.0, "image_size": 64, "lr": 0.01})
    assert (cfg.epochs, cfg.lr, cfg.model.arch, cfg.model.hidden) == (7, 0.01, "tiny_cnn", (64,))
    assert (cfg.preprocess.image_size, cfg.preprocess.intensity, cfg.preprocess.clip_limit) == (64, "percentile", 2.0)
    assert cfg.out == str(Path("runs") / "tiny_cnn") and cfg.batch_size == 16
    assert train_config(None, {"out": "elsewhere"}).out == "elsewhere"
    with pytest.raises(UserError, match="unknown setting image_sise"):
        train_config(None, {"image_sise": 64})
    with pytest.raises(UserError, match="recipe.json: epochs must be a whole number"):
        train_config({"epochs": 1.5}, {}, "recipe.json")
