"""Compact weights files: the network's state dict with int8 (per-output-channel scales) or fp16 storage.

Format (a dict, loaded with torch.load(weights_only=True)):
  {"format": "boneage-weights/1", "config": ModelSpec as a dict (model, preprocess, training),
   "storage": "int8" | "float16" | "float32",
   "state_dict": {name: tensor}, "scales": {name: float32 per-channel scales (int8 only)}, "card": {...}}
"""

from __future__ import annotations

import torch

FORMAT = "boneage-weights/1"
ENSEMBLE_FORMAT = "boneage-ensemble/1"  # {"format", "members": [weights files as dicts], "card": {...}}


def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: q = round(w / s), s = max|w| / 127 per row of the first dimension."""
    flat = t.float().reshape(t.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(t.shape), scale


def pack_state_dict(state: dict[str, torch.Tensor], storage: str) -> tuple[dict, dict]:
    """Weights of conv and linear layers (>= 2-D) in the chosen storage; biases, norms and buffers stay float32."""
    packed, scales = {}, {}
    for name, t in state.items():
        if not t.is_floating_point():
            packed[name] = t
        elif storage == "int8" and t.dim() >= 2:
            packed[name], scales[name] = quantize_int8(t)
        elif storage == "float16" and t.dim() >= 2:
            packed[name] = t.half()
        else:
            packed[name] = t.float()
    return packed, scales


def unpack_state_dict(packed: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in packed.items():
        if name in scales:
            s = scales[name].float()
            out[name] = t.float() * s.view(-1, *([1] * (t.dim() - 1)))
        elif t.is_floating_point():
            out[name] = t.float()
        else:
            out[name] = t
    return out


def make_weights_file(state: dict[str, torch.Tensor], config: dict, storage: str, card: dict | None = None) -> dict:
    packed, scales = pack_state_dict(state, storage)
    return {"format": FORMAT, "config": config, "storage": storage, "state_dict": packed, "scales": scales,
            "card": card or {}}
