"""Every registered trunk, one tiny forward and backward through the poster's head."""

import pytest
import torch

from boneage.config import ModelConfig
from boneage.errors import UserError
from boneage.models import create_model, list_trunks, trunk_spec


@pytest.mark.parametrize("arch", list_trunks())
def test_trunk_forward_backward_gives_one_age_per_image(arch):
    torch.manual_seed(0)
    model = create_model(arch=arch)
    size = max(trunk_spec(arch).min_size, 64)
    x, male = torch.randn(2, 3, size, size), torch.tensor([1.0, 0.0])
    age = model(x, male)
    assert age.shape == (2,) and torch.isfinite(age).all()
    age.sum().backward()
    grads = [p.grad for p in model.trunk.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_sex_changes_the_prediction_through_its_own_branch():
    torch.manual_seed(0)
    model = create_model(arch="tiny_cnn").eval()
    x = torch.randn(1, 3, 32, 32)
    assert model(x, torch.tensor([1.0])) != model(x, torch.tensor([0.0]))


def test_head_shape_is_the_posters():
    head = create_model(arch="tiny_cnn").head
    assert head.sex[0].out_features == 16
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [1000, 500, 1]


def test_output_starts_at_the_label_scale():
    model = create_model(ModelConfig(arch="tiny_cnn", age_mean=100.0, age_std=1e-6)).eval()
    assert torch.allclose(model(torch.randn(3, 3, 32, 32), torch.ones(3)), torch.full((3,), 100.0), atol=1e-3)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown architecture 'vgg'.*inception_v3.*resnet101"):
        create_model(arch="vgg")
