"""Prediction without the training stack: load a checkpoint or shipped weights (weights_only=True) and run it."""

from boneage.inference.predictor import Predictor, load_model

__all__ = ["Predictor", "load_model"]
