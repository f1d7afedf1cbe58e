"""Several models as one: each member's answers over the test-time views, pooled. Their mean is the bone age and
their spread part of its uncertainty; members that disagree on a film mark it as one to read with care."""

from __future__ import annotations

import numpy as np

from boneage.errors import UserError


class Ensemble:
    """Members with one preprocessing and one runtime, behind `Predictor`'s surface."""

    def __init__(self, members: list, names: list[str] | None = None):
        if not members:
            raise UserError("an ensemble needs at least one model")
        first = members[0]
        for i, m in enumerate(members[1:], start=1):
            who = names[i] if names else f"member {i + 1}"
            if m.preprocess != first.preprocess:
                raise UserError(f"{who}: prepares films differently from the first model ({m.preprocess} vs "
                                f"{first.preprocess}); an ensemble's members must share their preprocessing")
        self.parts = members
        self.spec, self.tta, self.runtime = first.spec, first.tta, first.runtime
        self.members = len(members)
        self.name = " + ".join(m.name for m in members)
        self.version = "+".join(m.version or "?" for m in members)
        # An ensemble's own MAD is not any member's: it is known only from a card packed with it (`export`).
        # Its "uncertain" threshold is the members' largest, for views every member was calibrated on.
        views = {m.card.get("validation_views") for m in members}
        by_views = [m.card.get("uncertain_above_months_by_views") or {} for m in members]
        self.card = {"members": [m.card for m in members], "uncertain_above_months":
                     max((m.card.get("uncertain_above_months") or 0) for m in members) or None,
                     "validation_views": views.pop() if len(views) == 1 else "mixed",  # None: not stated
                     "uncertain_above_months_by_views": {k: max(b[k] for b in by_views) for k in by_views[0]
                                                         if all(k in b for b in by_views)},
                     "validation_mad_months": members[0].card.get("validation_mad_months") if len(members) == 1
                     else None}

    @property
    def preprocess(self):
        return self.spec.preprocess

    def explainer(self):
        """The first member's network: what a saliency map is drawn from (its caption says so)."""
        return self.parts[0].explainer()

    def model_input(self, gray: np.ndarray) -> np.ndarray:
        return self.parts[0].model_input(gray)

    def predict_views(self, images, male) -> np.ndarray:
        """(members x views, B) months."""
        return np.concatenate([m.predict_views(images, male) for m in self.parts], axis=0)

    def predict_batch(self, images, male) -> np.ndarray:
        return self.predict_views(images, male).mean(axis=0)
