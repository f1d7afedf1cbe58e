"""See what the network looks at: activation maps of several layers, and a saliency overlay for one prediction.

`explain_file` writes the figures of `boneage explain`; `heatmap_file` the one overlay of `predict --heatmap` (and of
the service). Both use the predictor's own model and preprocessing, and import neither Lightning nor training code.
"""

from boneage.explain.activations import activations, default_layers, stage_names
from boneage.explain.files import explain_file, heatmap_file
from boneage.explain.saliency import METHODS, Saliency, region_fraction, saliency

__all__ = ["METHODS", "Saliency", "activations", "default_layers", "explain_file", "heatmap_file", "region_fraction",
           "saliency", "stage_names"]
