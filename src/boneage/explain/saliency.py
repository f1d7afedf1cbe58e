"""Which parts of the radiograph drove one prediction: class-activation saliency for the bone-age regression.

The CAM methods come from `pytorch_grad_cam` (grad-cam, the `explain` extra). The target is the predicted age, so the
map shows where the features that raise the estimate lie (against each channel's image mean: `_mean_baseline`). It is
computed on the model's square input, then mapped back onto the original image's pixels, undoing the stretch (or the
padding), so a non-square radiograph is not distorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from boneage.config import Preprocess
from boneage.data.preprocess import to_model_input
from boneage.errors import UserError
from boneage.explain.activations import cam_layer, resolve

# Methods whose map is linear in the layer's activations for given gradients, so the mean baseline below applies
# exactly (Grad-CAM++ and XGrad-CAM derive their weights from the activations themselves).
METHODS = {"gradcam": "GradCAM", "hirescam": "HiResCAM", "layercam": "LayerCAM"}
LABELS = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "layercam": "LayerCAM"}
@dataclass
class Saliency:
    map: np.ndarray  # float32 (H, W) in [0, 1] on the original image's pixels; 1 = the image's most salient point
    model_map: np.ndarray  # float32 (S, S): the same on the model's square input
    bone_age_months: float
    male: bool
    method: str
    layer: str


class _WithSex(nn.Module):
    """pytorch_grad_cam calls model(x): bind the sex input so the regression net fits that signature."""

    def __init__(self, model: nn.Module, male: torch.Tensor):
        super().__init__()
        self.model, self.male = model, male

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.male)


def _age(output: torch.Tensor) -> torch.Tensor:
    """The CAM target: the predicted months themselves (one scalar per image)."""
    return output


def _mean_baseline(cam_class):
    """`cam_class` with each channel's activations taken relative to their mean over the image ("baseline: mean").

    Plain Grad-CAM weighs raw activations, i.e. against an all-zero baseline. On the shipped model every location of a
    younger-than-average hand then pulls the estimate down, the whole map is negative and the ReLU leaves nothing.
    The trunk ends in global average pooling, so the head sees only each channel's mean: what a location adds is its
    activation above that mean. Warm then means "features that raise the estimate concentrate here", at every age.
    """

    class MeanBaseline(cam_class):
        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
            centred = activations - activations.mean(axis=(2, 3), keepdims=True)
            return super().get_cam_image(input_tensor, target_layer, targets, centred, grads, eigen_smooth)

    return MeanBaseline


def to_original(square: np.ndarray, shape: tuple[int, int], pp: Preprocess,
                region: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """A map on the (S, S) model input -> the original (H, W), inverting `preprocess.resize` geometry.

    region: the part of the film the model saw (top, bottom, left, right as fractions of the height and width, from
    `preprocess.model_region`); the map is placed there and is zero outside it."""
    if region is not None and tuple(region) != (0.0, 1.0, 0.0, 1.0):
        h, w = shape
        top, bottom = round(region[0] * h), max(round(region[1] * h), round(region[0] * h) + 1)
        left, right = round(region[2] * w), max(round(region[3] * w), round(region[2] * w) + 1)
        out = np.zeros((h, w), dtype=np.float32)
        out[top:bottom, left:right] = to_original(square, (bottom - top, right - left), pp)
        return out
    h, w = shape
    size = square.shape[0]
    if pp.resize == "pad" and h != w:  # crop the padded band off first: it holds no image
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (size - nh) // 2, (size - nw) // 2
        square = square[top : top + nh, left : left + nw]
    img = Image.fromarray(np.ascontiguousarray(square, dtype=np.float32), mode="F")
    return np.clip(np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32), 0.0, 1.0)


def _cam_class(method: str, baseline: str):
    if baseline not in ("mean", "zero"):
        raise UserError(f"saliency baseline must be 'mean' or 'zero', not {baseline!r}")
    if method not in METHODS:
        raise UserError(f"--method: unknown saliency method {method!r}; choose from {', '.join(METHODS)}")
    try:
        import pytorch_grad_cam
    except ImportError:
        raise UserError("saliency needs the grad-cam package: pip install 'boneage[explain]'") from None
    cam_class = getattr(pytorch_grad_cam, METHODS[method])
    return _mean_baseline(cam_class) if baseline == "mean" else cam_class


def saliency(model: nn.Module, prepared: np.ndarray, male: bool, pp: Preprocess, original_shape: tuple[int, int],
             method: str = "gradcam", layer: str | None = None, baseline: str = "mean",
             region: tuple[float, float, float, float] | None = None) -> Saliency:
    """uint8 (S, S) prepared image (from `Predictor.model_input`) -> saliency on the original (H, W) and the prediction.

    baseline "mean" (default, see `_mean_baseline`) or "zero" (the method exactly as published)."""
    cam_class = _cam_class(method, baseline)
    layer = layer or cam_layer(model)
    (name, module), = resolve(model, [layer], "--saliency-layer")
    device = next(model.parameters()).device
    # Gradients flow to the input only: the weights are frozen for the call, so no .grad buffers the size of the
    # model are left behind, and a model whose weights were frozen still gets a map.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    cam = None
    try:
        # callers may sit inside inference_mode / no_grad (a service handler): gradients are needed here
        with torch.inference_mode(False), torch.enable_grad():
            x = to_model_input(torch.as_tensor(prepared)[None, None].to(device), pp).requires_grad_(True)
            cam = cam_class(model=_WithSex(model, torch.tensor([float(male)], device=device)), target_layers=[module])
            square = cam(input_tensor=x, targets=[_age])[0]
            age = float(cam.outputs[0].detach())
    finally:
        if cam is not None:
            cam.activations_and_grads.release()  # not `with cam`: its __exit__ swallows IndexError
        for p, flag in flags:
            p.requires_grad_(flag)
    square = np.nan_to_num(np.asarray(square, dtype=np.float32))
    return Saliency(to_original(square, original_shape, pp, region), square, age, male, method, name)


def region_fraction(saliency_map: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Share of the total saliency inside box = (top, left, bottom, right) as fractions of the side; for tests and
    for checking what a model attends to. 0 when the map is empty."""
    h, w = saliency_map.shape
    top, left, bottom, right = (round(f * s) for f, s in zip(box, (h, w, h, w)))
    total = float(saliency_map.sum())
    return float(saliency_map[top:bottom, left:right].sum()) / total if total > 0 else 0.0


__all__ = ["LABELS", "METHODS", "Saliency", "region_fraction", "saliency", "to_original"]
