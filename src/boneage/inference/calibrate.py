"""int8 weights that keep the float network's answers: batch-norm statistics re-fitted on a few films after rounding.

Why: rounding every convolution's weights to int8 (one scale per output channel) shifts each layer's output a little,
and through Inception v3's 94 batch-normalised layers the shifts add up to months (the model card: "int8 storage").
Each batch norm's running mean and variance are re-fitted so that its output has the mean and variance the float
network's had there, layer after layer in execution order (later layers see corrected inputs), twice over the films.
Rounding stays; only float32 buffers move, so the file keeps its size and format.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from boneage.data.images import decode_image
from boneage.data.labels import read_labels
from boneage.data.preprocess import preprocess_gray, to_model_input
from boneage.errors import UserError
from boneage.inference.weights import pack_state_dict, unpack_state_dict


def calibration_batch(images, labels, preprocess, films: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `films` rows of a label CSV (training films, not validation ones) -> model input and sex."""
    records = read_labels(labels, images).rows[:films]
    if not records:
        raise UserError(f"{labels}: no films to calibrate on")
    gray = np.stack([preprocess_gray(decode_image(r.image), preprocess) for r in records])
    x = to_model_input(torch.from_numpy(gray)[:, None], preprocess)
    return x, torch.tensor([r.male for r in records], dtype=torch.float32)


def _norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _run_with_norm_hooks(model: nn.Module, x: torch.Tensor, male: torch.Tensor, on_input) -> None:
    """One forward pass calling `on_input(name, module, mean, var)` just before each batch norm runs, with the
    per-channel mean and variance of its input over the batch (and the positions)."""
    hooks = []
    for name, bn in _norms(model).items():
        def hook(module, inputs, name=name):
            dims = [d for d in range(inputs[0].dim()) if d != 1]
            on_input(name, module, inputs[0].mean(dims), inputs[0].var(dims))
        hooks.append(bn.register_forward_pre_hook(hook))
    try:
        model(x, male)
    finally:
        for h in hooks:
            h.remove()


def quantize_calibrated(model: nn.Module, x: torch.Tensor, male: torch.Tensor, storage: str = "int8",
                        passes: int = 2) -> tuple[dict, dict]:
    """A float network in eval mode -> (its state with batch-norm statistics fitted to the rounded weights,
    {"mean_shift_months": [before, after], "mean_abs_shift_months": [before, after]} on the calibration films)."""
    was_grad = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        reference = model(x, male)
        target = {}
        _run_with_norm_hooks(model, x, male, lambda name, module, mean, var: target.__setitem__(name, (mean, var)))
        float_stats = {n: (bn.running_mean.clone(), bn.running_var.clone()) for n, bn in _norms(model).items()}
        rounded = copy.deepcopy(model).eval()
        rounded.load_state_dict(unpack_state_dict(*pack_state_dict(model.state_dict(), storage)))

        def shift() -> tuple[float, float]:
            d = rounded(x, male) - reference
            return round(float(d.mean()), 3), round(float(d.abs().mean()), 3)

        before = shift()
        def refit(name, module, mean_q, var_q):
            mean_f, var_f = target[name]
            m, v = float_stats[name]  # the float network's: each pass re-fits from them, not from the last
            # (x - m) / s keeps the float network's output moments: s' = s sqrt(vq/vf), m' = mq - s'/s (mf - m)
            ratio = (var_q / var_f.clamp_min(1e-12)).sqrt()
            module.running_mean.copy_(mean_q - ratio * (mean_f - m))
            module.running_var.copy_(((v + module.eps) * ratio**2 - module.eps).clamp_min(0))

        for _ in range(passes):
            _run_with_norm_hooks(rounded, x, male, refit)
        after = shift()
    finally:
        torch.set_grad_enabled(was_grad)
    state = dict(model.state_dict())  # the float weights (rounded again, identically, when packed)...
    for name, t in rounded.state_dict().items():  # ...with the re-fitted statistics
        if name.endswith(("running_mean", "running_var")):
            state[name] = t
    return state, {"mean_shift_months": [before[0], after[0]], "mean_abs_shift_months": [before[1], after[1]],
                   "films": len(x)}
