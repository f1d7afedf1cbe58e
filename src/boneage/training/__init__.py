"""Training: the Lightning system around the plain network, the datamodule, on-device augmentation, the run."""
