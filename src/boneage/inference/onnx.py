"""ONNX export of a boneage network, and an ONNX Runtime predictor with the same surface as `Predictor`.

The ONNX file is self-describing: its metadata holds the model spec (network and preprocessing) as JSON under
`boneage.config`, so `OnnxPredictor` prepares images exactly as the checkpoint was trained, from the file alone.

    graph inputs:  image float32 (B, C, S, S), standardised as `to_model_input` makes it;  male float32 (B,) 1/0
    graph output:  bone_age_months float32 (B,)          (B is dynamic)

`load_predictor(model, runtime)` is what `predict` and `serve` call: runtime "torch" -> `Predictor`; "onnx" ->
`OnnxPredictor` on a .onnx file, or on a .pt/.ckpt exported once into a cache keyed by the file's SHA-256.
Neither Lightning nor the training code is imported; onnx and onnxruntime only when used (the `onnx` extra).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

import boneage.inference.tta as tta_views
from boneage.config import ModelSpec, Preprocess, to_dict
from boneage.data.preprocess import preprocess_gray, to_model_input
from boneage.errors import UserError
from boneage.inference.predictor import EnsembleFile, Predictor, default_model_path, load_model, load_torch

OPSET = 17
EXPORT_VERSION = 1  # part of the cache key: bump when the exported graph changes
META_CONFIG, META_CARD, META_SOURCE = "boneage.config", "boneage.card", "boneage.source_sha256"
INPUTS, OUTPUT = ("image", "male"), "bone_age_months"


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"the ONNX runtime needs {module} (pip install 'boneage[onnx]')") from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_onnx(model_path: str | Path | None, out: str | Path, opset: int = OPSET, log=None) -> dict:
    """Checkpoint or weights file -> ONNX file with the config in its metadata, checked in ONNX Runtime.

    Returns {"path", "bytes", "opset", "image_size", "max_abs_diff_months"} (the last: ONNX Runtime vs PyTorch on two
    random inputs, one male and one female).
    """
    onnx = _need("onnx")
    model_path = Path(model_path) if model_path else default_model_path()
    model, spec, card = load_model(model_path)
    if log:
        log(f"converting {model_path.name} for ONNX Runtime once (~20 s for Inception v3), kept in {Path(out).parent}")
    pp = spec.preprocess
    x = torch.rand(2, 1, pp.image_size, pp.image_size, generator=torch.Generator().manual_seed(0))
    image, male = to_model_input(x, pp), torch.tensor([1.0, 0.0])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # two processes filling the same cache must not collide
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        # dynamo=False: the TorchScript-based exporter, which needs no onnxscript; dynamic batch via dynamic_axes
        torch.onnx.export(model, (image, male), str(tmp), input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_axes={INPUTS[0]: {0: "batch"}, INPUTS[1]: {0: "batch"}, OUTPUT: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    proto = onnx.load(str(tmp))
    meta = {META_CONFIG: json.dumps(to_dict(spec)), META_CARD: json.dumps(card or {}),
            META_SOURCE: file_sha256(model_path)}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "boneage: bone age in months from a hand radiograph; inputs image (B,C,S,S), male (B,)"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    try:
        got = OnnxPredictor(tmp).run(image.numpy(), male.numpy())
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    with torch.inference_mode():
        want = model(image, male).numpy()
    os.replace(tmp, out)
    return {"path": str(out), "bytes": out.stat().st_size, "opset": opset, "image_size": pp.image_size,
            "max_abs_diff_months": float(np.abs(got - want).max())}


class OnnxPredictor:
    """ONNX Runtime behind `Predictor`'s surface: `prepare`, `predict_views`, `predict_batch`, `preprocess`, `spec`."""

    runtime = "onnx"
    members = 1

    def __init__(self, path: str | Path, threads: int | None = None, tta: str = tta_views.DEFAULT):
        ort = _need("onnxruntime")
        self.tta = tta_views.check(tta)
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a file that is not a model
            raise UserError(f"{self.path}: not an ONNX model ({str(exc).strip().splitlines()[0][:160]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_CONFIG not in meta:
            raise UserError(f"{self.path}: ONNX file without a boneage config (export it with `boneage export`)")
        self.spec = ModelSpec.from_config(json.loads(meta[META_CONFIG]), f"{self.path} metadata")
        self.card: dict = json.loads(meta.get(META_CARD, "{}"))

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None, tta: str = tta_views.DEFAULT) -> OnnxPredictor:
        return cls(path, threads, tta)

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        """Float gray image of any size -> uint8 (S, S) model input (the one preprocessing)."""
        return preprocess_gray(gray, self.preprocess)

    def run(self, image: np.ndarray, male: np.ndarray) -> np.ndarray:
        """Graph inputs as they are: float32 (B, C, S, S) standardised, (B,) 1/0 -> (B,) months."""
        feeds = {INPUTS[0]: np.ascontiguousarray(image, dtype=np.float32),
                 INPUTS[1]: np.ascontiguousarray(male, dtype=np.float32)}
        return self.session.run([OUTPUT], feeds)[0]

    def predict_views(self, images: np.ndarray | torch.Tensor, male) -> np.ndarray:
        """uint8 (B, S, S) prepared images and (B,) male flags -> (V, B) months, one row per test-time view."""
        return tta_views.predict_views(lambda x, m: self.run(x.numpy(), m), images, male, self.preprocess, self.tta,
                                       self.spec.bias_correction)

    def predict_batch(self, images: np.ndarray | torch.Tensor, male) -> np.ndarray:
        """uint8 (B, S, S) prepared images and (B,) male flags -> (B,) bone age in months (the mean over views)."""
        return self.predict_views(images, male).mean(axis=0)

    predict_files = Predictor.predict_files  # the same loop: it only calls self.prepare and self.predict_batch


def cache_dir() -> Path:
    """Where exported ONNX files are kept: $BONEAGE_CACHE/onnx, else ~/.cache/boneage/onnx."""
    root = os.environ.get("BONEAGE_CACHE") or Path.home() / ".cache" / "boneage"
    return Path(root) / "onnx"


def onnx_for(model: str | Path | None = None, cache: str | Path | None = None, log=None) -> Path:
    """The ONNX file for a model: itself if it is one, else its export in the cache (made once, then reused)."""
    path = Path(model) if model else default_model_path()
    if path.suffix.lower() == ".onnx":
        return path
    if not path.is_file():
        load_model(path)  # raises the usual UserError (no shipped model / no such checkpoint)
    target = Path(cache or cache_dir()) / f"{file_sha256(path)[:24]}-v{EXPORT_VERSION}-opset{OPSET}.onnx"
    if not target.is_file():
        export_onnx(path, target, log=log)
    return target


def onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def load_predictor(model=None, runtime: str = "torch", threads: int | None = None, cache: str | Path | None = None,
                   tta: str = tta_views.DEFAULT, device: str = "cpu", log=None):
    """A predictor for `model` on runtime "torch", "onnx" or "auto": a path (None: BONEAGE_MODEL or the shipped
    model), or a list of paths (an ensemble, pooled over members and test-time views).

    "auto" is ONNX Runtime on the CPU when it is installed (the model runs near this CPU's compute floor there, at
    about half of PyTorch's time: docs/benchmarks.md), PyTorch otherwise, on a GPU, or for a file ONNX cannot take
    (an ensemble file)."""
    if isinstance(model, (list, tuple)):
        if len(model) > 1:
            from boneage.inference.ensemble import Ensemble

            return Ensemble([load_predictor(m, runtime, threads, cache, tta, device) for m in model],
                            [str(m) for m in model])
        model = model[0] if model else None
    if runtime == "auto":
        if device == "cpu" and onnx_available():
            try:
                return OnnxPredictor(onnx_for(model, cache, log), threads, tta)
            except EnsembleFile:  # ONNX takes one network: the ensemble runs on PyTorch
                pass
        runtime = "torch"
    if runtime == "torch":
        if model and Path(model).suffix.lower() == ".onnx":
            raise UserError(f"{model}: an ONNX file needs --runtime onnx")
        if threads:
            torch.set_num_threads(threads)
        return load_torch(model, device=device, tta=tta)
    if runtime == "onnx":
        return OnnxPredictor(onnx_for(model, cache, log), threads, tta)
    raise UserError(f"unknown runtime {runtime!r}; expected auto, torch or onnx")
