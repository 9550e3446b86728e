"""Bad input gets a ValueError that names the problem and the expected shape."""

import pytest
import torch

import helpers as icon
from helpers.analysis import trace_steps
from helpers.models import FCNet, multistep, post_network


@pytest.fixture
def net():
    return post_network()


@pytest.fixture
def pair():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, 1, 28, 28, generator=generator), torch.rand(3, 1, 28, 28, generator=generator)


def test_valid_pair_is_accepted(net, pair):
    loss = net(*pair)
    assert torch.isfinite(loss.all_loss)


@pytest.mark.parametrize(
    "moving_shape, fixed_shape, message",
    [
        ((1, 28, 28), (1, 28, 28), r"rank 4, shape \[B, 1, 28, 28\]; got rank 3.*unsqueeze"),
        ((3, 1, 1, 28, 28), (3, 1, 1, 28, 28), r"rank 4.*got rank 5"),
        ((3, 1, 28, 28), (2, 1, 28, 28), r"same shape.*\[3, 1, 28, 28\].*\[2, 1, 28, 28\]"),
        ((3, 1, 32, 32), (3, 1, 32, 32), r"shape \[3, 1, 32, 32\], expected \[B, 1, 28, 28\].*assign_identity_map"),
        ((3, 2, 28, 28), (3, 2, 28, 28), r"expected \[B, 1, 28, 28\]"),
    ],
)
def test_wrong_shapes(net, moving_shape, fixed_shape, message):
    with pytest.raises(ValueError, match=message):
        net(torch.rand(moving_shape), torch.rand(fixed_shape))


def test_integer_images(net, pair):
    moving = (pair[0] * 255).to(torch.uint8)
    with pytest.raises(ValueError, match=r"moving has integer dtype torch.uint8.*/ 255"):
        net(moving, pair[1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_images(net, pair, bad):
    fixed = pair[1].clone()
    fixed[0, 0, 5, 5] = bad
    with pytest.raises(ValueError, match="fixed contains NaN or inf"):
        net(pair[0], fixed)


def test_not_a_tensor(net, pair):
    with pytest.raises(ValueError, match=r"moving must be a torch.Tensor of shape \[B, 1, 28, 28\], got ndarray"):
        net(pair[0].numpy(), pair[1])


def test_missing_identity_map(pair):
    inner = icon.FunctionFromVectorField(FCNet(size=28))
    net = icon.losses.DiffusionRegularizedNet(multistep(inner, 9), icon.ssd, lmbda=0.05)
    with pytest.raises(ValueError, match=r"no identity map: call assign_identity_map\(images.shape\)"):
        net(*pair)
    with pytest.raises(ValueError, match="no identity map"):
        inner(*pair)


def test_identity_map_of_another_size(pair):
    net = post_network(size=28)
    net.assign_identity_map((1, 1, 20, 20))
    with pytest.raises(ValueError, match=r"expected \[B, 1, 20, 20\]"):
        net(*pair)


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (1, 1, 1, 28, 28)])
def test_assign_identity_map_needs_an_image_shape(shape):
    with pytest.raises(ValueError, match=r"expects an image shape \[B, C, H, W\]"):
        post_network().assign_identity_map(shape)


def test_network_output_of_the_wrong_shape(pair):
    class Wrong(torch.nn.Module):
        def forward(self, moving, fixed):
            return torch.zeros(moving.shape[0], 2, 14, 14)

    module = icon.FunctionFromVectorField(Wrong())
    module.assign_identity_map(pair[0].shape)
    with pytest.raises(ValueError, match=r"displacement of shape \[3, 2, 14, 14\], expected \[3, 2, 28, 28\]"):
        module(*pair)


@pytest.mark.parametrize("lmbda", [-0.1, float("nan"), "0.05", True])
def test_bad_lambda(lmbda):
    with pytest.raises(ValueError, match="lmbda must be a finite number >= 0"):
        icon.losses.DiffusionRegularizedNet(multistep(icon.FunctionFromVectorField(FCNet())), icon.ssd, lmbda)


@pytest.mark.parametrize("steps", [0, -1, 2.0, True])
def test_bad_step_count(steps):
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        multistep(icon.FunctionFromVectorField(FCNet()), steps)


def test_trace_checks_its_input(net, pair):
    with pytest.raises(ValueError, match="same shape"):
        trace_steps(net, pair[0], pair[1][:2])


def test_reading_results_before_any_forward_pass():
    with pytest.raises(RuntimeError, match="no forward pass has run yet"):
        post_network().phi_AB_vectorfield


def test_ssd_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        icon.ssd(torch.zeros(2, 1, 4, 4), torch.zeros(1, 1, 4, 4))


def test_non_finite_network_output_is_an_error_not_a_crash(pair):
    class Exploded(torch.nn.Module):
        def forward(self, moving, fixed):
            return torch.full((moving.shape[0], 2, 28, 28), float("nan"))

    module = icon.FunctionFromVectorField(Exploded())
    module.assign_identity_map(pair[0].shape)
    with pytest.raises(FloatingPointError, match="NaN or inf displacements"):
        module(*pair)
