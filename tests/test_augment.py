"""Batch augmentation: each transform does what it says and keeps the batch's shape and range."""

from __future__ import annotations

import pytest
import torch

from boneage.config import TrainConfig
from boneage.errors import UserError
from boneage.training.augment import augment, gaussian_blur, low_resolution, sensor_noise


@pytest.fixture
def batch() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(8, 1, 48, 40)


def test_blur_smooths_each_image_and_keeps_flat_ones_flat(batch):
    blurred = gaussian_blur(batch, 2.0)
    assert blurred.shape == batch.shape
    assert blurred.std() < 0.8 * batch.std()
    flat = torch.full((3, 1, 20, 20), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat, atol=1e-6)
    # a sigma near zero leaves the image as it was
    assert torch.allclose(gaussian_blur(batch, 1e-4), batch, atol=1e-5)


def test_blur_draws_a_sigma_per_image(batch):
    torch.manual_seed(1)
    blurred = gaussian_blur(batch, 3.0)
    loss = (batch - blurred).abs().mean(dim=(1, 2, 3))
    assert loss.max() > 2 * loss.min()


def test_noise_stays_in_range_and_is_at_most_the_given_sd(batch):
    noisy = sensor_noise(batch * 0.5 + 0.25, 0.05)
    diff = noisy - (batch * 0.5 + 0.25)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert 0 < diff.std() < 0.05
    assert diff.std(dim=(1, 2, 3)).max() < 0.06


def test_low_resolution_loses_detail_in_about_half_the_batch(batch):
    torch.manual_seed(0)
    out = low_resolution(batch, 0.5)
    changed = (out - batch).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert out.shape == batch.shape
    assert 0 < changed.sum() < len(batch) or len(batch) < 4
    assert out[changed].std() < batch[changed].std()


def test_augment_applies_the_configured_degradations(batch):
    cfg = TrainConfig(hflip=False, vflip=False, contrast=0, brightness=0, gamma=0, noise=0.05, blur=1.0, low_res=0.3)
    out = augment(batch, cfg)
    assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, batch)
    plain = TrainConfig(hflip=False, vflip=False, contrast=0, brightness=0, gamma=0)
    assert torch.equal(augment(batch, plain), batch)


@pytest.mark.parametrize("setting", [{"noise": -0.1}, {"blur": -1}, {"low_res": 1.0}])
def test_out_of_range_degradations_are_refused(setting):
    with pytest.raises(UserError):
        TrainConfig(**setting).validate()
