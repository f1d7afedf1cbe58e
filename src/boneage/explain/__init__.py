"""See what the network looks at: activation maps of several layers, and a saliency overlay for one assessment.

`explain_file` writes the figures of `boneage explain`; `heatmap_for` the one overlay of `predict --heatmap` (the
service draws the same map at its preview's size). Both use the runtime's own network and preprocessing, and import
neither Lightning nor training code.
"""

from boneage.explain.activations import activations, default_layers, stage_names
from boneage.explain.files import explain_file, heatmap_for, saliency_of
from boneage.explain.saliency import METHODS, Saliency, region_fraction, saliency

__all__ = ["METHODS", "Saliency", "activations", "default_layers", "explain_file", "heatmap_for", "region_fraction",
           "saliency", "saliency_of", "stage_names"]
