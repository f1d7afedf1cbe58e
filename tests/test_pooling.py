"""Issue 9: each implementation of Inception v3's 3x3 average pool is F.avg_pool2d(x, 3, 1, 1); weights unchanged."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import inception as tvi

from boneage.config import POOL_IMPLS, ModelConfig, model_config_from_dict
from boneage.errors import UserError
from boneage.models import create_model
from boneage.models.pooling import avg_pool3x3, set_pool_impl
from boneage.models.trunks import _Inception, _InceptionA, _InceptionC, _InceptionE

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
# float32: rounding of 9-term sums. bfloat16 (8 significant bits, 2^-8 = 0.0039 apart just above 1): the alternatives
# round their partial sums (and "conv" its 1/9) to bf16, the native kernel only its result: a few units apart.
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.bfloat16: {"rtol": 2**-6, "atol": 2**-6}}


def _pool_and_grad(fn, x, grad_out):
    x = x.detach().requires_grad_()
    y = fn(x)
    y.backward(grad_out)
    return y, x.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("impl", POOL_IMPLS)
def test_pool_and_its_gradient_are_avg_pool2d(impl, dtype, fmt, device):
    torch.manual_seed(0)
    x = torch.randn(3, 24, 13, 10, device=device).to(dtype).contiguous(memory_format=FORMATS[fmt])
    grad_out = torch.randn(x.shape, device=device).to(dtype).contiguous(memory_format=FORMATS[fmt])
    want, want_grad = _pool_and_grad(lambda t: F.avg_pool2d(t, 3, stride=1, padding=1), x, grad_out)
    got, got_grad = _pool_and_grad(lambda t: avg_pool3x3(t, impl), x, grad_out)
    assert got.dtype == dtype and got.shape == want.shape and got_grad.dtype == dtype
    # the memory layout passes through (the next 1x1 convolution wants channels_last where it came in so)
    assert got.is_contiguous(memory_format=FORMATS[fmt])
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])
    torch.testing.assert_close(got_grad.float(), want_grad.float(), **TOL[dtype])


def test_the_sums_hand_written_backward_checks_in_float64():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: avg_pool3x3(t, "sum"), (x,))
    assert torch.autograd.gradgradcheck(lambda t: avg_pool3x3(t, "sum"), (x,))


BLOCKS = {  # small widths: the same code paths as the real blocks
    "A": (tvi.InceptionA, _InceptionA, {"in_channels": 16, "pool_features": 8}),
    "C": (tvi.InceptionC, _InceptionC, {"in_channels": 16, "channels_7x7": 8}),
    "E": (tvi.InceptionE, _InceptionE, {"in_channels": 16}),
}


def _block_and_grad(block, x):
    x = x.detach().requires_grad_()
    y = block(x)
    # a fixed random weighting of the outputs: its gradient flows back as a random output gradient
    (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    return y, x.grad


@pytest.mark.parametrize("impl", POOL_IMPLS)
@pytest.mark.parametrize("block", BLOCKS)
def test_switched_blocks_are_torchvisions_blocks(block, impl):
    """Same parameter names and initial values, same outputs and input gradients (train-mode batch norm)."""
    tv_cls, our_cls, kwargs = BLOCKS[block]
    torch.manual_seed(0)
    theirs = tv_cls(**kwargs)
    torch.manual_seed(0)
    ours = our_cls(**kwargs)
    ours.pool_impl = impl
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    x = torch.randn(4, 16, 9, 9)
    want, want_grad = _block_and_grad(theirs, x)
    got, got_grad = _block_and_grad(ours, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5)


def test_trunk_keeps_torchvisions_parameters_and_their_initialisation():
    torch.manual_seed(0)
    ours = _Inception(3).net.state_dict()
    torch.manual_seed(0)
    theirs = tvi.inception_v3(weights=None, aux_logits=False, init_weights=True, transform_input=False).state_dict()
    theirs = {k: v for k, v in theirs.items() if not k.startswith("fc.")}  # the trunk drops the classifier
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_shipped_weights_predict_the_same_with_every_pool():
    """The shipped file loads into every variant (the state_dict keys are untouched) and predicts the same ages."""
    from boneage.inference.checkpoint import load_network

    model, cfg, _ = load_network()
    assert cfg.model.pool_impl == "native"  # a file written before the setting existed
    other = create_model(replace(cfg.model, pool_impl="conv"), in_chans=cfg.preprocess.channels).eval()
    other.load_state_dict(model.state_dict())  # strict: the same keys, nothing missing, nothing extra
    torch.manual_seed(0)
    # smaller than the model's input, to keep the test quick on a CPU: every pool still sees a map larger than 3x3
    x, male = torch.randn(3, cfg.preprocess.channels, 160, 160), torch.tensor([1.0, 0.0, 1.0])
    with torch.no_grad():
        want = model(x, male)
        for impl in ("conv", "sum"):
            set_pool_impl(other, impl)
            torch.testing.assert_close(other(x, male), want, rtol=0, atol=1e-3)


def test_the_setting_is_checked_with_a_clear_error():
    with pytest.raises(UserError, match="pool_impl must be one of native, conv, sum, not 'fast'"):
        ModelConfig(pool_impl="fast")
    with pytest.raises(UserError, match="pool_impl"):
        model_config_from_dict({"pool_impl": "cudnn"})
    with pytest.raises(UserError, match="pool_impl 'conv' is for inception_v3; resnet18 has no such pools"):
        create_model(arch="resnet18", pool_impl="conv")
    assert set_pool_impl(create_model(arch="tiny_cnn"), "native") == 0


def test_model_config_picks_the_implementation_of_all_nine_pools():
    model = create_model(arch="inception_v3", pool_impl="sum")
    impls = [m.pool_impl for m in model.modules() if isinstance(m, (_InceptionA, _InceptionC, _InceptionE))]
    assert impls == ["sum"] * 9


def test_bench_takes_the_implementation_and_refuses_an_unknown_one():
    from boneage.cli import build_parser

    bench = ["bench", "--images", "DIR", "--labels", "CSV"]
    assert build_parser().parse_args(bench).pool_impl == "native"
    assert build_parser().parse_args([*bench, "--pool-impl", "sum"]).pool_impl == "sum"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*bench, "--pool-impl", "fast"])


def test_train_takes_the_speed_settings():
    from boneage.cli import build_parser

    train = ["train", "--images", "DIR", "--labels", "CSV"]
    args = build_parser().parse_args([*train, "--pool-impl", "sum", "--no-channels-last"])
    assert args.pool_impl == "sum" and args.channels_last is False
    assert build_parser().parse_args(train).channels_last is None  # the recipe's setting stands


def test_exported_weights_carry_the_reference_pools_and_runs_of_either_average(tmp_path):
    """pool_impl is a training speed setting: weights leave in the form that runs everywhere (ONNX included), and a
    run with the fast pools averages with one with the native pools."""
    from boneage.config import ModelSpec, Preprocess, to_dict
    from boneage.inference.checkpoint import load_network
    from boneage.inference.export import export_average, export_weights
    from boneage.inference.weights import make_weights_file

    files = []
    for impl in ("sum", "native"):
        spec = ModelSpec(ModelConfig(arch="inception_v3", pool_impl=impl), Preprocess(image_size=75))
        net = create_model(arch="inception_v3", pool_impl=impl)
        files.append(tmp_path / f"{impl}.pt")
        torch.save(make_weights_file(net.state_dict(), to_dict(spec), "float16"), files[-1])
    export_weights(files[0], tmp_path / "out.pt", "float16")
    assert load_network(tmp_path / "out.pt")[1].model.pool_impl == "native"
    export_average(files, tmp_path / "soup.pt", "float16")
    assert load_network(tmp_path / "soup.pt")[1].model.pool_impl == "native"
