"""ONNX export and the ONNX Runtime predictor: self-describing file, dynamic batch, the same months as PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import boneage

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'boneage[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'boneage[onnx]')")

from boneage.config import ModelConfig, Preprocess, TrainConfig, to_dict  # noqa: E402
from boneage.errors import UserError  # noqa: E402
from boneage.inference.loading import load_predictor  # noqa: E402
from boneage.inference.onnx import OnnxPredictor, export_onnx, onnx_for  # noqa: E402
from boneage.inference.predictor import TorchPredictor  # noqa: E402
from boneage.inference.weights import make_weights_file  # noqa: E402
from boneage.models import create_model  # noqa: E402

CFG = TrainConfig(model=ModelConfig(arch="tiny_cnn", hidden=(32,)), preprocess=Preprocess(image_size=64))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A randomly initialised tiny_cnn weights file whose output varies with the image by tens of months."""
    torch.manual_seed(0)
    model = create_model(CFG.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() > 1:
                p.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(make_weights_file(model.state_dict(), to_dict(CFG), "float32"), path)
    return path


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return out, export_onnx(tiny, out)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Six PNGs of different sizes, shapes and bit depths."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (h, w) in enumerate([(64, 64), (300, 240), (97, 150), (512, 400), (80, 80), (200, 333)]):
        yy, xx = np.mgrid[:h, :w]
        img = np.sin(xx / rng.uniform(3, 30)) * np.cos(yy / rng.uniform(3, 30)) + rng.normal(0, 0.3, (h, w))
        img = (img - img.min()) / (img.max() - img.min())
        array = (img * 65535).astype(np.uint16) if i % 2 else (img * 255).astype(np.uint8)
        paths.append(folder / f"{i}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


def test_export_reports_a_checked_file(exported):
    out, result = exported
    assert result["path"] == str(out) and out.stat().st_size == result["bytes"]
    assert result["opset"] >= 17 and result["image_size"] == 64
    assert result["max_abs_diff_months"] < 0.01


def test_onnx_file_is_self_describing(exported, tiny):
    import onnx

    out, _ = exported
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    saved = json.loads(meta["boneage.config"])  # the model spec: network, preprocessing and the training settings
    assert saved["model"] == json.loads(json.dumps(to_dict(CFG.model)))
    assert saved["preprocess"] == json.loads(json.dumps(to_dict(CFG.preprocess)))
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["image", "male"]
    predictor = OnnxPredictor(out)
    assert predictor.spec.model == CFG.model and predictor.preprocess == TorchPredictor.load(tiny).preprocess


def test_runtimes_agree_within_a_tenth_of_a_month(exported, tiny, images):
    torch_p, onnx_p = TorchPredictor.load(tiny), OnnxPredictor(exported[0])
    male = [True, False, True, False, False, True]
    a = np.array([boneage.assess(f, m, model=torch_p, check=False).bone_age_months for f, m in zip(images, male)])
    b = np.array([boneage.assess(f, m, model=onnx_p, check=False).bone_age_months for f, m in zip(images, male)])
    assert np.ptp(a) > 1.0  # the images give different answers, so agreement means something
    assert np.abs(a - b).max() < 0.1


def test_batch_size_is_dynamic(exported):
    predictor = OnnxPredictor(exported[0])
    x = np.random.default_rng(1).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    five = predictor.predict_batch(x, [1, 0, 1, 0, 1])
    one = np.concatenate([predictor.predict_batch(x[i:i + 1], [i % 2 == 0]) for i in range(5)])
    assert five.shape == (5,) and np.allclose(five, one, atol=1e-3)


def test_load_predictor_exports_once_into_the_cache(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = onnx_for(tiny, cache)
    assert first.parent == cache and first.suffix == ".onnx"
    import boneage.inference.onnx as module

    monkeypatch.setattr(module, "export_onnx", lambda *a, **k: pytest.fail("exported twice"))
    assert isinstance(load_predictor(tiny, "onnx", cache=cache), OnnxPredictor)
    assert onnx_for(first) == first  # an .onnx file is used as it is
    assert isinstance(load_predictor(tiny, "torch"), TorchPredictor)


def test_runtime_errors(tmp_path, exported):
    with pytest.raises(UserError, match="unknown runtime 'tensorrt'"):
        load_predictor(None, "tensorrt")
    with pytest.raises(UserError, match="an ONNX file needs --runtime onnx"):
        load_predictor(exported[0], "torch")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="junk.onnx: not an ONNX model"):
        OnnxPredictor(tmp_path / "junk.onnx")
    import onnx

    bare = onnx.load(str(exported[0]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(UserError, match="bare.onnx: ONNX file without a boneage config"):
        OnnxPredictor(tmp_path / "bare.onnx")


def test_cli_export_and_predict_with_both_runtimes(tiny, images, tmp_path, capsys):
    from boneage.cli import main

    assert main(["export", "--model", str(tiny), "--out", str(tmp_path / "m.onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff_months"] < 0.01
    months = {}
    for runtime, model in (("torch", tiny), ("onnx", tmp_path / "m.onnx")):
        assert main(["predict", *map(str, images[:3]), "--sex", "M,F,M", "--model", str(model), "--runtime", runtime,
                     "--json", "--no-checks"]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["model"]["runtime"] for r in records] == [runtime] * 3
        months[runtime] = np.array([r["bone_age_months"] for r in records])
    assert np.abs(months["torch"] - months["onnx"]).max() <= 0.1


def test_onnx_path_does_not_import_lightning():
    code = ("import sys, boneage.inference.onnx, boneage.quality, boneage.dicom, boneage.sds; "
            "print('lightning' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_shipped_model_runtimes_agree(tmp_path, images):
    """The real model (about 30-60 s on 2 cores: export, then both runtimes): the numbers users get must agree."""
    start = time.perf_counter()
    torch_p = load_predictor(None, "torch")
    onnx_p = load_predictor(None, "onnx", cache=tmp_path)
    grays = np.stack([torch_p.model_input(np.asarray(Image.open(p), np.float32)) for p in images[:4]])
    a = torch_p.predict_batch(grays, [1, 0, 1, 0])
    b = onnx_p.predict_batch(grays, [1, 0, 1, 0])
    assert np.abs(a - b).max() < 0.1, (a, b)
    print(f"shipped-model parity test: {time.perf_counter() - start:.1f} s, max diff {np.abs(a - b).max():.4f}")
