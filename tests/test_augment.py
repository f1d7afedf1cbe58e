"""Batch augmentation: each transform does what it says and keeps the batch's shape and range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boneage.config import TrainConfig
from boneage.data.intensity import equalize_clipped
from boneage.errors import UserError
from boneage.training.augment import (
    augment,
    equalize_clipped_batch,
    film_noise,
    gaussian_blur,
    low_resolution,
    narrow_range,
    sensor_noise,
)


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


def _films(seed: int = 0) -> torch.Tensor:
    """Four films in their own gray levels: a flat background with a brighter blob, of very different ranges."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(40.0), indexing="ij")
    blob = torch.exp(-((yy - 24) ** 2 + (xx - 20) ** 2) / 120)
    films = [base + span * blob + torch.rand(48, 40, generator=g) * span / 8
             for base, span in ((5.0, 12.0), (20.0, 200.0), (0.0, 255.0), (100.0, 30.0))]
    return torch.stack(films)[:, None].round()


def test_the_batch_normalisation_on_the_device_is_the_one_inference_uses():
    films = _films()
    ours = equalize_clipped_batch(films, 3.0) * 255
    for film, out in zip(films, ours):
        expected = np.round(equalize_clipped(film[0].numpy(), 3.0) * 255)
        assert np.abs(out[0].numpy() - expected).max() <= 1  # a rounding at a half, at most
        assert np.abs(out[0].numpy() - expected).mean() < 0.01
    flat = torch.full((1, 1, 16, 16), 7.0)
    assert (equalize_clipped_batch(flat, 3.0) == 0).all()  # as the numpy original: a constant film is black


def test_noise_before_the_normalisation_is_amplified_on_a_dark_film_as_at_inference():
    torch.manual_seed(0)
    films = _films()
    clean = equalize_clipped_batch(films, 3.0)
    noisy = film_noise(films.repeat(64, 1, 1, 1), 3.0)
    assert noisy.min() >= 0 and noisy.max() <= films.max()  # clipped to each film's range, as at inference
    moved = (equalize_clipped_batch(noisy, 3.0) - clean.repeat(64, 1, 1, 1)).reshape(64, 4, -1).std(dim=2).mean(0)
    # the dark, narrow film (range ~14 levels) moves several times more than the full-range one, and more than
    # `sensor_noise` at the same nominal size after the normalisation could ever move it
    assert moved[0] > 3 * moved[2]
    assert moved[0] > 3.0 / 255


def test_narrowed_films_keep_their_darkest_level_and_meet_film_noise_as_narrow_films_do():
    torch.manual_seed(0)
    films = _films()
    assert torch.equal(narrow_range(films, 0.0), films)
    many = films[2:3].repeat(256, 1, 1, 1)  # the full-range film
    narrowed = narrow_range(many, 1.0)
    span = lambda x: (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))  # noqa: E731
    ratio = span(narrowed) / span(many)
    assert torch.equal(narrowed.amin(dim=(1, 2, 3)), many.amin(dim=(1, 2, 3)))
    assert ratio.min() >= 0.25 - 1e-6 and ratio.max() <= 1 + 1e-6 and ratio.std() > 0.1  # drawn per film
    half = span(narrow_range(many, 0.5)) / span(many)
    assert 0.3 < (half < 1 - 1e-6).float().mean() < 0.7  # about the share asked for
    # the same noise moves a narrowed film after the normalisation more than the film as it was
    clean = equalize_clipped_batch(many[:64], 3.0)
    as_is = (equalize_clipped_batch(film_noise(many[:64], 3.0), 3.0) - clean).std()
    squeezed = narrow_range(many[:64], 1.0, least=0.25)
    moved = (equalize_clipped_batch(film_noise(squeezed, 3.0), 3.0) - equalize_clipped_batch(squeezed, 3.0)).std()
    assert moved > 1.5 * as_is
