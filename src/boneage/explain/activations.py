"""What each layer responds to: forward hooks on named modules of the trunk, for one prepared radiograph.

Layer names are those of the trunk's own modules (torchvision's: `Mixed_6e`, `layer3`, `features.5`; `0`..`4` for
tiny_cnn), so they match the architecture's papers and documentation. Dotted sub-modules (`layer4.1.conv2`) work too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from boneage.data.preprocess import to_model_input
from boneage.errors import UserError
from boneage.models.registry import TrunkSpec, trunk_spec

# Modules that give no spatial map of their own (pooled, flattened, removed classifier parts).
_NOT_STAGES = (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.Linear)


def _spec(model: nn.Module) -> TrunkSpec:
    return trunk_spec(model.cfg.arch)


def core(model: nn.Module) -> nn.Module:
    """The architecture's own network inside the trunk (its spec's `root`): layer names are relative to it."""
    root = _spec(model).root
    return model.trunk.get_submodule(root) if root else model.trunk


def stage_names(model: nn.Module) -> list[str]:
    """The trunk's stages in forward order: what `--layers` lists when a name is unknown."""
    under = _spec(model).stages
    parent = core(model).get_submodule(under) if under else core(model)
    return [f"{under}.{name}" if under else name for name, child in parent.named_children()
            if not isinstance(child, _NOT_STAGES)]


def default_layers(model: nn.Module, count: int = 5) -> list[str]:
    """The architecture's spread, or for one that names none, `count` stages evenly spaced and ending at the last."""
    if _spec(model).layers:
        return list(_spec(model).layers)
    stages = stage_names(model)
    picks = np.linspace(0, len(stages) - 1, min(count, len(stages))).round().astype(int)
    return [stages[i] for i in dict.fromkeys(picks)]


def cam_layer(model: nn.Module) -> str:
    """Saliency's layer: the spec's, else the last stage."""
    return _spec(model).cam_layer or stage_names(model)[-1]


def resolve(model: nn.Module, names: list[str], option: str = "--layers") -> list[tuple[str, nn.Module]]:
    """Names -> modules; an unknown name is a one-line UserError that lists the valid stage names."""
    modules = dict(core(model).named_modules())
    prefix = ".".join(["trunk", _spec(model).root]).rstrip(".") + "."
    out, unknown = [], []
    for name in names:
        short = name.removeprefix(prefix)  # a full `model.named_modules()` name is accepted too
        if short and short in modules:
            out.append((short, modules[short]))
        else:
            unknown.append(name)
    if unknown:
        arch = model.cfg.arch
        stages = stage_names(model)
        example = next((n for n in modules if n.startswith(stages[-1] + ".")), None)
        also = f" (or a dotted sub-module, e.g. {example})" if example else ""
        raise UserError(f"{option}: unknown layer(s) {', '.join(map(repr, unknown))} for {arch}; "
                        f"valid: {', '.join(stages)}{also}")
    return out


@torch.inference_mode()
def activations(model: nn.Module, prepared: np.ndarray, male: bool, pp, names: list[str] | None = None
                ) -> tuple[list[tuple[str, np.ndarray]], float]:
    """uint8 (S, S) prepared image -> ([(layer name, float32 (C, h, w))...], predicted months), in forward order."""
    layers = resolve(model, names or default_layers(model))
    captured: dict[str, torch.Tensor] = {}

    def hook(name):
        # clone: an in-place ReLU after this module would otherwise overwrite what was captured
        return lambda module, inputs, output: captured.setdefault(name, output.detach().float().clone())

    handles = [module.register_forward_hook(hook(name)) for name, module in layers]
    try:
        device = next(model.parameters()).device
        x = to_model_input(torch.as_tensor(prepared)[None, None].to(device), pp)
        age = float(model(x, torch.tensor([float(male)], device=device))[0])
    finally:
        for h in handles:
            h.remove()
    out = []
    for name, _ in layers:
        act = captured.get(name)
        if act is None or act.dim() != 4:
            raise UserError(f"--layers: {name!r} gives no spatial map (output shape "
                            f"{tuple(act.shape) if act is not None else 'none'}); choose a convolutional stage")
        out.append((name, act[0].cpu().numpy()))
    return out, age
