"""`boneage explain` and `predict --heatmap`: a saliency that is right (not just present), figures that keep the
original's geometry, and the command-line surface (JSON, one-line errors, no Lightning in predict)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boneage.cli import main
from boneage.config import ModelConfig, Preprocess
from boneage.data.preprocess import resize
from boneage.data.synthetic import MAX_AGE, make_dataset, make_image
from boneage.explain.activations import cam_layer, default_layers, resolve
from boneage.explain.saliency import region_fraction, saliency, to_original
from boneage.inference.checkpoint import SHIPPED
from boneage.inference.predictor import TorchPredictor
from boneage.models import create_model, list_trunks, trunk_spec

SIZE = 64
# Two disjoint signal regions, each 16% of the image: a model that read its age anywhere else would put ~16% there.
BOXES = {"top_left": (0.05, 0.05, 0.45, 0.45), "bottom_right": (0.55, 0.55, 0.95, 0.95)}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny_cnn checkpoints, each trained on images whose only age signal sits in its own box (~25 s)."""
    pytest.importorskip("lightning")
    from boneage.config import TrainConfig
    from boneage.training.train import run

    root = tmp_path_factory.mktemp("explain-models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a few shared cores, intra-op threads fight: one trains these nets ~5x faster
    try:
        out = {}
        for name, box in BOXES.items():
            labels = make_dataset(root / name, 400, size=SIZE, seed=1, signal_box=box)
            # intensity "none": histogram equalisation would spread the disc's area into every background pixel's
            # rank, a global copy of the signal, and a model may rightly read it anywhere. Flips would move the box.
            cfg = TrainConfig(images=str(root / name / "images"), labels=str(labels), out=str(root / name / "run"),
                              model=ModelConfig(arch="tiny_cnn"), preprocess=Preprocess(image_size=SIZE,
                                                                                        intensity="none"),
                              epochs=20, batch_size=32, lr=3e-3, schedule="cosine", seed=1,
                              cache_dir=str(root / "cache"), contrast=0, brightness=0, gamma=0, vflip=False,
                              hflip=False)
            out[name] = run(cfg, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return out


def _other(name: str) -> tuple[float, float, float, float]:
    return next(box for key, box in BOXES.items() if key != name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BOXES))
def test_saliency_mass_lies_in_the_region_that_carries_the_age(tiny_models, name):
    predictor = TorchPredictor.load(tiny_models[name])
    box = BOXES[name]
    rng = np.random.default_rng(123)  # fresh images, none seen in training
    own, elsewhere, errors = [], [], []
    for i in range(24):
        age = float(rng.uniform(12, MAX_AGE))
        gray = make_image(age, rng, SIZE, box).astype(np.float32)
        s = saliency(predictor.model, predictor.model_input(gray), bool(i % 2), predictor.preprocess, gray.shape)
        own.append(region_fraction(s.map, box))
        elsewhere.append(region_fraction(s.map, _other(name)))
        errors.append(abs(s.bone_age_months - age))
    # the model has learnt the signal (ages spread over 12..228 months, SD ~62), else its saliency would mean nothing
    assert np.mean(errors) < 25, f"{name}: MAD {np.mean(errors):.1f} months"
    assert np.mean(own) > 0.5 and np.median(own) > 0.5, f"{name}: saliency in its own box {np.round(own, 2)}"
    # ... and the other model's signal region, where this one's images hold only distractors, gets next to nothing
    assert np.mean(elsewhere) < 0.1, f"{name}: saliency in the other box {np.round(elsewhere, 2)}"


@pytest.mark.slow
def test_saliency_of_a_non_square_image_stays_on_the_same_anatomy(tiny_models):
    """A film twice as wide as high: the model sees it squeezed, the map must land back where the disc is."""
    predictor, box = TorchPredictor.load(tiny_models["top_left"]), BOXES["top_left"]
    rng = np.random.default_rng(5)
    fractions = []
    for i in range(12):
        square = make_image(float(rng.uniform(60, MAX_AGE)), rng, SIZE, box)
        wide = np.asarray(Image.fromarray(square).resize((2 * SIZE, SIZE), Image.BILINEAR), dtype=np.float32)
        s = saliency(predictor.model, predictor.model_input(wide), bool(i % 2), predictor.preprocess, wide.shape)
        assert s.map.shape == wide.shape
        fractions.append(region_fraction(s.map, box))  # box fractions scale with each side
    assert np.mean(fractions) > 0.5, np.round(fractions, 2)


def test_with_framing_views_the_map_is_drawn_on_the_film_as_given(tiny_models):
    from boneage.assessment import Case, assess
    from boneage.explain.files import saliency_of

    film = make_image(100.0, np.random.default_rng(3), SIZE, BOXES["top_left"])
    maps = {}
    for tta in ("flip", "framings"):
        predictor = TorchPredictor.load(tiny_models["top_left"], tta=tta)
        record, prepared = assess(Case(film, sex="M", check=False), predictor)
        maps[tta] = saliency_of(predictor, prepared).map
    assert prepared.pixels.ndim == 3 and record.model.views == "framings"
    np.testing.assert_allclose(maps["framings"], maps["flip"], atol=1e-6)


@pytest.mark.parametrize("mode", ["stretch", "pad"])
@pytest.mark.parametrize("shape", [(40, 100), (100, 40), (64, 64)])
def test_to_original_inverts_the_model_input_geometry(mode, shape):
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    smooth = (0.5 + 0.4 * np.sin(np.pi * yy / h) * np.cos(2 * np.pi * xx / w)).astype(np.float32)
    pp = Preprocess(image_size=64, resize=mode)
    back = to_original(resize(smooth, pp), shape, pp)
    assert back.shape == shape
    assert np.abs(back - smooth).mean() < 0.02


@pytest.mark.parametrize("arch", list_trunks())
def test_every_architecture_has_a_layer_spread_and_a_saliency_layer(arch):
    model = create_model(ModelConfig(arch=arch))
    layers = resolve(model, default_layers(model))
    assert 4 <= len(layers) <= 6
    assert resolve(model, [cam_layer(model)])
    if trunk_spec(arch).layers:
        assert [n for n, _ in layers] == list(trunk_spec(arch).layers)


def _wide_image(folder: Path, name: str = "wide.png", seed: int = 7) -> Path:
    """A non-square (96 x 64) film with the top-left model's signal in it."""
    rng = np.random.default_rng(seed)
    square = make_image(150.0, rng, SIZE, BOXES["top_left"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(square).resize((96, 64), Image.BILINEAR).save(path)
    return path


@pytest.mark.slow
def test_explain_cli_writes_figures_at_the_original_geometry(tiny_models, tmp_path, capsys):
    image = _wide_image(tmp_path)
    out = tmp_path / "figures"
    code = main(["explain", str(image), "--sex", "F", "--model", str(tiny_models["top_left"]), "--out", str(out),
                 "--json", "--no-checks"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sex"] == "F" and 0 < result["bone_age_months"] < 260
    assert (result["width"], result["height"]) == (96, 64)
    assert result["layers"] == list(trunk_spec("tiny_cnn").layers) and result["saliency_layer"] == "4"
    sizes = {}
    for key in ("activations", "saliency", "overlay"):
        path = Path(result["files"][key])
        assert path.is_file() and path.parent == out
        with Image.open(path) as img:
            assert img.format == "PNG"
            sizes[key] = img.size
    assert sizes["overlay"] == (96, 64)  # pixel for pixel the original
    assert sizes["saliency"][0] > sizes["saliency"][1]  # two wide panels side by side, not squares

    capsys.readouterr()
    assert main(["explain", str(image), "--sex", "M", "--model", str(tiny_models["top_left"]), "--out", str(out),
                 "--layers", "0,trunk.2", "--method", "layercam", "--no-checks"]) == 0
    text = capsys.readouterr().out
    assert "months" in text and "activations:" in text


@pytest.mark.slow
@pytest.mark.parametrize("option, expected", [(["--layers", "0,conv9"], "--layers: unknown layer(s) 'conv9'"),
                                               (["--method", "gradcam9"], "--method: unknown saliency method"),
                                               (["--saliency-layer", "x"], "--saliency-layer: unknown layer(s) 'x'")])
def test_a_bad_option_is_one_line_and_exit_2(tiny_models, tmp_path, capsys, option, expected):
    image = _wide_image(tmp_path)
    code = main(["explain", str(image), "--sex", "M", "--model", str(tiny_models["top_left"]),
                 "--out", str(tmp_path / "figures"), "--no-checks", *option])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"boneage: error: {expected}")
    if option[0] != "--method":
        assert "valid: 0, 1, 2, 3, 4" in err  # the names one can use instead


@pytest.mark.slow
def test_predict_heatmap_writes_one_overlay_per_image_without_lightning(tiny_models, tmp_path):
    images = [_wide_image(tmp_path / "a", "x.png", 1), _wide_image(tmp_path / "b", "x.png", 2),
              _wide_image(tmp_path / "a", "y.png", 3)]
    heatmaps = tmp_path / "heatmaps"
    argv = ["predict", *map(str, images), "--sex", "M,F,M", "--model", str(tiny_models["top_left"]), "--json",
            "--heatmap", str(heatmaps), "--no-checks"]
    # A fresh interpreter, so "predict never imports Lightning" is checked for real (this one has trained models).
    code = (f"import sys; from boneage.cli import main; rc = main({argv!r}); "
            "assert 'lightning' not in sys.modules, 'predict imported Lightning'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["sex"] for r in records] == ["M", "F", "M"]
    paths = [Path(r["heatmap"]) for r in records]
    assert len(set(paths)) == 3, paths  # a/x.png and b/x.png do not overwrite each other
    for path in paths:
        assert path.parent == heatmaps and path.is_file()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > img.size[1]


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped model in this installation")
def test_explain_with_the_shipped_model_on_a_non_square_film(tmp_path):
    from boneage.assessment import Case, assess
    from boneage.explain import explain_file

    rng = np.random.default_rng(0)
    film = make_image(120.0, rng, 120, (0.2, 0.2, 0.8, 0.8))
    path = tmp_path / "film.png"
    Image.fromarray(film).resize((150, 210), Image.BILINEAR).save(path)  # portrait, like most hand films
    predictor = TorchPredictor.load()
    record, prepared = assess(Case(path, sex="M", check=False), predictor)
    result = explain_file(predictor, record, prepared, tmp_path / "out")
    assert result["bone_age_months"] == record.to_dict()["bone_age_months"]
    assert result["layers"] == list(trunk_spec("inception_v3").layers) and result["saliency_layer"] == "Mixed_7c"
    with Image.open(result["files"]["overlay"]) as img:
        assert img.size == (150, 210)
