"""Shared fixtures: generated datasets and one small model trained on them, built once per test session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsna-bone-age"
REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    import tempfile

    os.environ.setdefault("MPLBACKEND", "Agg")
    # ONNX conversions made by the default runtime land in a throwaway folder, not the user's ~/.cache
    os.environ["BONEAGE_CACHE"] = tempfile.mkdtemp(prefix="boneage-test-cache-")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    """(images folder, labels CSV) of 360 generated 64 px images whose disc radius grows with age."""
    from boneage.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("synthetic")
    labels = make_dataset(root, 360, size=64, seed=0)
    return root / "images", labels


@pytest.fixture(scope="session")
def trained(synthetic, tmp_path_factory) -> Path:
    """A tiny_cnn run trained for a few epochs on the generated set; returns the run folder."""
    from boneage.config import ModelConfig, Preprocess, TrainConfig
    from boneage.training.train import run

    images, labels = synthetic
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(images=str(images), labels=str(labels), out=str(out), model=ModelConfig(arch="tiny_cnn"),
                      preprocess=Preprocess(image_size=64), epochs=14, batch_size=32, lr=3e-3, schedule="cosine",
                      cache_dir=str(out.parent / "cache"), precision="32-true")  # the same model on every CPU
    run(cfg, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained tiny network as a weights file: fast, for tests of everything around the model."""
    import torch

    from boneage.config import ModelConfig, Preprocess, TrainConfig, to_dict
    from boneage.inference.weights import make_weights_file
    from boneage.models import create_model

    torch.manual_seed(0)
    cfg = TrainConfig(model=ModelConfig(arch="tiny_cnn", hidden=(32,)), preprocess=Preprocess(image_size=64))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(make_weights_file(create_model(cfg.model).state_dict(), to_dict(cfg), "float32"), path)
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m boneage ARGS` in a fresh process, as a user would run it (slow: ~3 s of imports)."""
    import sys

    return subprocess.run([sys.executable, "-m", "boneage", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def cli(*args) -> subprocess.CompletedProcess[str]:
    """`boneage ARGS` in this process: the same `main`, exit code and output, without a new interpreter."""
    import contextlib
    import io

    from boneage.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
