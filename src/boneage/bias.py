"""The model's bias by age, corrected: a monotone map of its answer, stored in the model file and applied by every door.

A regression network shrinks its answers toward the training mean: young children read older and older children
younger (the shipped model: +5.6 months at 2-6 years, -1.6 at 14-20). `boneage.evaluation.bias` fits, on held-out
films, the answer the model gives on average at each true age, f(true) (piecewise linear, smooth, increasing); the
correction is its inverse, answer -> f⁻¹(answer), so that on average the corrected answer is the true age again, at
every age. Beyond the fitted range the answer is shifted by the correction at the nearest end.

Applied to the mean over test-time views: every view moves by the same amount, so the spread (the uncertainty) and
the "uncertain" flag are unchanged. Saved as plain data under the model spec's `bias_correction` (weights file, ONNX
metadata), so any runtime that reads the spec applies the same map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from boneage.errors import UserError


@dataclass(frozen=True)
class BiasCorrection:
    """f(true age) at `knots` months, per sex ("M", "F") or for both ("all"); the correction inverts it."""

    knots: tuple[float, ...]  # true ages, months, increasing
    curves: dict[str, tuple[float, ...]]  # "all" | "M" | "F" -> the model's mean answer at each knot, increasing
    provenance: dict[str, Any] = field(default_factory=dict)  # fitted on what, when, with what held-out figures

    def __post_init__(self):
        k = np.asarray(self.knots, dtype=float)
        if k.ndim != 1 or k.size < 2 or np.any(np.diff(k) <= 0):
            raise UserError("bias correction: knots must be at least two increasing ages")
        if not self.curves or not (set(self.curves) == {"all"} or set(self.curves) == {"M", "F"}):
            raise UserError("bias correction: curves must be 'all', or 'M' and 'F'")
        for name, curve in self.curves.items():
            c = np.asarray(curve, dtype=float)
            if c.shape != k.shape or np.any(np.diff(c) <= 0) or not np.all(np.isfinite(c)):
                raise UserError(f"bias correction: curve {name} must be finite and increasing at every knot")

    def apply(self, months: np.ndarray, male) -> np.ndarray:
        """Answers (B,) in months, male flags (B,) -> corrected answers (B,)."""
        months = np.asarray(months, dtype=np.float64)
        male = np.broadcast_to(np.asarray(male, dtype=bool), months.shape)
        out = np.empty_like(months)
        for name, sel in self._groups(male):
            out[sel] = _inverse(months[sel], np.asarray(self.knots, float), np.asarray(self.curves[name], float))
        return out

    def _groups(self, male: np.ndarray):
        if "all" in self.curves:
            return [("all", np.ones_like(male))]
        return [("M", male), ("F", ~male)]

    def to_dict(self) -> dict[str, Any]:
        return {"knots": list(self.knots), "curves": {k: list(v) for k, v in self.curves.items()},
                "provenance": dict(self.provenance)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "model") -> BiasCorrection | None:
        if not data:
            return None
        try:
            return cls(tuple(float(x) for x in data["knots"]),
                       {str(k): tuple(float(x) for x in v) for k, v in data["curves"].items()},
                       dict(data.get("provenance") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{where}: unreadable bias correction ({exc})") from None


def _inverse(answers: np.ndarray, knots: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """f⁻¹ by linear interpolation inside [f(first knot), f(last knot)]; a constant shift beyond."""
    inside = np.interp(answers, curve, knots)
    below = answers + (knots[0] - curve[0])
    above = answers + (knots[-1] - curve[-1])
    return np.where(answers < curve[0], below, np.where(answers > curve[-1], above, inside))


def correct_views(views: np.ndarray, male, correction: BiasCorrection | None) -> np.ndarray:
    """(V, B) answers per view -> the same, each film's views moved by the correction of their mean."""
    if correction is None:
        return views
    mean = views.mean(axis=0)
    return views + (correction.apply(mean, male) - mean)[None, :]
