"""ONNX export of a boneage network, and an ONNX Runtime predictor with the `Predictor` surface.

The ONNX file is self-describing: its metadata holds the model spec (network and preprocessing) as JSON under
`boneage.config`, so `OnnxPredictor` prepares images exactly as the checkpoint was trained, from the file alone.

    graph inputs:  image float32 (B, C, S, S), standardised as `to_model_input` makes it;  male float32 (B,) 1/0
    graph output:  bone_age_months float32 (B,)          (B is dynamic)

`boneage.inference.loading.load_predictor` converts a .pt/.ckpt once into a cache keyed by the file's SHA-256
(`onnx_for`). Neither Lightning nor the training code is imported; onnx and onnxruntime only when used (the `onnx`
extra).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

import boneage.inference.tta as tta_views
from boneage.config import ModelSpec, Preprocess, to_dict
from boneage.data.preprocess import to_model_input
from boneage.errors import UserError
from boneage.inference.checkpoint import default_model_path, file_sha256, load_network
from boneage.inference.predictor import TorchPredictor, load_torch

OPSET = 17
EXPORT_VERSION = 1  # part of the cache key: bump when the exported graph changes
META_CONFIG, META_CARD, META_SOURCE = "boneage.config", "boneage.card", "boneage.source_sha256"
INPUTS, OUTPUT = ("image", "male"), "bone_age_months"


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"the ONNX runtime needs {module} (pip install 'boneage[onnx]')") from None


def export_onnx(model_path: str | Path | None, out: str | Path, opset: int = OPSET, log=None) -> dict:
    """Checkpoint or weights file -> ONNX file with the config in its metadata, checked in ONNX Runtime.

    Returns {"path", "bytes", "opset", "image_size", "max_abs_diff_months"} (the last: ONNX Runtime vs PyTorch on two
    random inputs, one male and one female).
    """
    onnx = _need("onnx")
    model_path = Path(model_path) if model_path else default_model_path()
    model, spec, card = load_network(model_path)
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
    """ONNX Runtime behind the `Predictor` surface. `source`: the PyTorch file it was converted from, if known: what
    saliency maps are drawn from (ONNX Runtime takes no gradients)."""

    runtime = "onnx"
    members = 1

    def __init__(self, path: str | Path, threads: int | None = None, tta: str = tta_views.DEFAULT,
                 source: str | Path | None = None):
        ort = _need("onnxruntime")
        self.tta = tta_views.check(tta)
        self.path = Path(path)
        self.source = Path(source) if source and Path(source).suffix.lower() != ".onnx" else None
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
        # The version of the weights it was converted from: the same figure as the PyTorch runtime reports.
        self.version = meta[META_SOURCE][:12] if META_SOURCE in meta else None
        self.name = str(self.card.get("name") or (self.source or self.path).stem)
        self._explainer: TorchPredictor | None = None

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    def model_input(self, gray: np.ndarray) -> np.ndarray:
        return tta_views.model_input(gray, self.preprocess, self.tta)

    def run(self, image: np.ndarray, male: np.ndarray) -> np.ndarray:
        """Graph inputs as they are: float32 (B, C, S, S) standardised, (B,) 1/0 -> (B,) months."""
        feeds = {INPUTS[0]: np.ascontiguousarray(image, dtype=np.float32),
                 INPUTS[1]: np.ascontiguousarray(male, dtype=np.float32)}
        return self.session.run([OUTPUT], feeds)[0]

    def predict_views(self, images: np.ndarray | torch.Tensor, male) -> np.ndarray:
        return tta_views.predict_views(lambda x, m: self.run(x.numpy(), m), images, male, self.preprocess, self.tta,
                                       self.spec.bias_correction)

    def predict_batch(self, images: np.ndarray | torch.Tensor, male) -> np.ndarray:
        return self.predict_views(images, male).mean(axis=0)

    def explainer(self) -> TorchPredictor:
        """The source weights in PyTorch, loaded on first use."""
        if self._explainer is None:
            if self.source is None:
                raise UserError(f"{self.path}: saliency maps need the PyTorch weights this ONNX file was exported "
                                "from (give them with --model FILE.pt)")
            self._explainer = load_torch(self.source, tta=self.tta)
        return self._explainer


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
        load_network(path)  # raises the usual UserError (no shipped model / no such checkpoint)
    target = Path(cache or cache_dir()) / f"{file_sha256(path)[:24]}-v{EXPORT_VERSION}-opset{OPSET}.onnx"
    if not target.is_file():
        export_onnx(path, target, log=log)
    return target
