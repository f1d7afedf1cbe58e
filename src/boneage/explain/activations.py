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

# A spread from early (edges, texture) to late (the map the head pools), about five per architecture.
DEFAULT_LAYERS = {
    "inception_v3": ["Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"],
    "resnet18": ["relu", "layer1", "layer2", "layer3", "layer4"],
    "resnet50": ["relu", "layer1", "layer2", "layer3", "layer4"],
    "resnet101": ["relu", "layer1", "layer2", "layer3", "layer4"],
    "efficientnet_b0": ["features.1", "features.3", "features.5", "features.7", "features.8"],
    "tiny_cnn": ["0", "1", "2", "4"],
}
# Modules that give no spatial map of their own (pooled, flattened, removed classifier parts).
_NOT_STAGES = (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.Linear)


def core(model: nn.Module) -> nn.Module:
    """The module whose children are the architecture's stages (the torchvision network inside a wrapper)."""
    trunk = model.trunk
    return trunk.net if hasattr(trunk, "net") else trunk


def stage_names(model: nn.Module) -> list[str]:
    """The trunk's stages in forward order: what `--layers` lists when a name is unknown."""
    names = []
    for name, child in core(model).named_children():
        if name == "features" and isinstance(child, nn.Sequential):  # efficientnet: the stages sit one level down
            names += [f"features.{i}" for i in range(len(child))]
        elif not isinstance(child, _NOT_STAGES):
            names.append(name)
    return names


def default_layers(model: nn.Module, count: int = 5) -> list[str]:
    """The architecture's spread, or for an unlisted one, `count` stages evenly spaced and ending at the last."""
    arch = getattr(getattr(model, "cfg", None), "arch", "")
    if arch in DEFAULT_LAYERS:
        return list(DEFAULT_LAYERS[arch])
    stages = stage_names(model)
    picks = np.linspace(0, len(stages) - 1, min(count, len(stages))).round().astype(int)
    return [stages[i] for i in dict.fromkeys(picks)]


def resolve(model: nn.Module, names: list[str], option: str = "--layers") -> list[tuple[str, nn.Module]]:
    """Names -> modules; an unknown name is a one-line UserError that lists the valid stage names."""
    modules = dict(core(model).named_modules())
    prefix = "trunk.net." if hasattr(model.trunk, "net") else "trunk."
    out, unknown = [], []
    for name in names:
        short = name.removeprefix(prefix)  # a full `model.named_modules()` name is accepted too
        if short and short in modules:
            out.append((short, modules[short]))
        else:
            unknown.append(name)
    if unknown:
        arch = getattr(getattr(model, "cfg", None), "arch", "this model")
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
