"""The one preprocessing: resize, per-image intensity normalisation, model input."""

import numpy as np
import pytest
import torch

from boneage.config import Preprocess
from boneage.data.images import decode_image
from boneage.data.preprocess import equalize, preprocess_gray, to_model_input


def _radiograph(h=400, w=300, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    hand = ((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 4) ** 2) < 1
    return np.clip(30 + 150 * hand + rng.normal(0, 10, (h, w)), 0, 255).astype(np.float32)


def test_output_is_square_uint8_of_the_configured_size():
    out = preprocess_gray(_radiograph(), Preprocess(image_size=128))
    assert out.shape == (128, 128) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255  # equalised: the full range is used


def test_equalisation_ignores_contrast_brightness_and_16_bit_storage():
    img = _radiograph()
    pp = Preprocess(image_size=96)
    base = preprocess_gray(img, pp).astype(float)
    for v in (img * 0.5, img + 40, img * 256.0):  # contrast halved, gray levels shifted, stored as 16-bit
        assert np.abs(preprocess_gray(v, pp).astype(float) - base).mean() < 1.0  # of 255 gray levels


def test_equalisation_nearly_ignores_gamma():
    """Gamma before resizing is not exactly undone (averaging does not commute with a power), but nearly."""
    img = _radiograph()
    gamma = 255.0 * (img / 255.0) ** 0.6
    eq, none = Preprocess(image_size=96), Preprocess(image_size=96, intensity="none")
    moved = np.abs(preprocess_gray(gamma, eq).astype(float) - preprocess_gray(img, eq)).mean()
    unnormalised = np.abs(preprocess_gray(gamma, none).astype(float) - preprocess_gray(img, none)).mean()
    assert moved < 6 and moved < unnormalised / 5


def test_percentile_windowing_is_affine_invariant_but_none_is_not():
    img = _radiograph()
    pct, none = Preprocess(image_size=64, intensity="percentile"), Preprocess(image_size=64, intensity="none")
    assert np.abs(preprocess_gray(img * 0.5, pct).astype(float) - preprocess_gray(img, pct)).mean() < 1.0
    assert np.abs(preprocess_gray(img * 0.5, none).astype(float) - preprocess_gray(img, none)).mean() > 20


def test_pad_keeps_the_aspect_ratio_stretch_does_not():
    img = np.zeros((400, 200), np.float32)
    img[:, 90:110] = 200  # a vertical bar, 10% of the width
    pad = preprocess_gray(img, Preprocess(image_size=100, resize="pad", intensity="none"))
    stretch = preprocess_gray(img, Preprocess(image_size=100, resize="stretch", intensity="none"))
    assert (pad[50] > 100).sum() == pytest.approx(5, abs=1)  # 20 px of 200, scaled by 100/400
    assert (stretch[50] > 100).sum() == pytest.approx(10, abs=1)  # 20 px of 200, scaled by 100/200


def test_constant_image_does_not_divide_by_zero():
    assert not equalize(np.full((10, 10), 7.0)).any()


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    from PIL import Image

    arr = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    gray = decode_image(tmp_path / "x.png")
    assert gray.max() > 60000 and gray.dtype == np.float32


def test_model_input_is_standardised_and_three_channel():
    pp = Preprocess(image_size=32)
    x = to_model_input(torch.full((2, 1, 32, 32), 255, dtype=torch.uint8), pp)
    assert x.shape == (2, 3, 32, 32)
    assert torch.allclose(x, torch.full_like(x, (1 - pp.mean) / pp.std))
