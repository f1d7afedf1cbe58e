"""Prediction without the training stack: load a checkpoint or shipped weights (weights_only=True) and run it on a
runtime (PyTorch, ONNX Runtime, an ensemble) behind one surface, `Predictor`."""

from boneage.inference.checkpoint import load_network
from boneage.inference.loading import load_predictor
from boneage.inference.predictor import Predictor, TorchPredictor

__all__ = ["Predictor", "TorchPredictor", "load_network", "load_predictor"]
