"""Properties of the building blocks that hold for any weights."""

import math

import pytest
import torch

import helpers as icon
from helpers.analysis import trace_steps
from helpers.models import FCNet, inner_fcnet, multistep, post_network
from conftest import perturbed_post_network
from helpers import engine
from helpers.warping import as_function, bilinear, compose, displacement_transform, interpolate


def random_images(batch, seed=0, size=28):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=generator)


def test_identity_map_convention():
    grid = icon.identity_map((5, 1, 4, 3))
    assert grid.shape == (1, 2, 4, 3) and grid.dtype == torch.float32
    assert torch.allclose(grid[0, 0, :, 0], torch.tensor([0, 1 / 3, 2 / 3, 1]))  # channel 0 = row
    assert torch.allclose(grid[0, 1, 0, :], torch.tensor([0, 0.5, 1]))


def test_interpolation_on_the_grid_returns_the_image():
    image = random_images(2)
    assert torch.allclose(as_function(image)(icon.identity_map(image.shape)), image, atol=1e-6)


def test_interpolation_is_bilinear_with_border_padding():
    image = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # value = 2·row + col
    points = torch.tensor([[[[0.5, 0.25, -1.0]], [[0.5, 1.0, 0.5]]]])  # (row, col) pairs
    sampled = interpolate(image, points)
    # (0.5, 0.5) -> 1.5; (0.25, 1) -> 1.5; (-1, 0.5) clamps to row 0 -> 0.5
    assert torch.allclose(sampled.flatten(), torch.tensor([1.5, 1.5, 0.5]))


@pytest.mark.parametrize("size", [(28, 28), (5, 9), (2, 2)])
def test_bilinear_written_out_is_grid_sample(size):
    """The readable interpolation (floor, weights, gather) gives grid_sample's values and
    gradients, at points inside, past the border and on the last row and column."""
    generator = torch.Generator().manual_seed(sum(size))
    values = torch.rand(3, 2, *size, generator=generator, dtype=torch.float64)
    points = torch.rand(3, 2, 7, 6, generator=generator, dtype=torch.float64) * 1.4 - 0.2
    points[:, :, 0, 0] = 1.0  # the last row and column exactly: the far corner of the last cell
    results = []
    for function in (bilinear, engine.reference_sample):
        leaves = [values.clone().requires_grad_(), points.clone().requires_grad_()]
        out = function(*leaves)
        results.append((out, *torch.autograd.grad((out * torch.sin(3 * out)).sum(), leaves)))
    for mine, theirs in zip(*results, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    # Float32, as the chapters use it: the same to float rounding.
    torch.testing.assert_close(bilinear(values.float(), points.float()), interpolate(values.float(), points.float()), rtol=0, atol=1e-6)


def test_a_constant_displacement_shifts_the_image():
    """φ(x) = x + d samples the moving image d further on: content moves by −d."""
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 2] = 1.0
    one_pixel_down = torch.zeros(1, 2, 5, 5)
    one_pixel_down[:, 0] = 0.25  # one pixel in coordinate units (spacing 1/4)
    warped = as_function(image)(displacement_transform(one_pixel_down)(icon.identity_map(image.shape)))
    assert warped[0, 0, 1, 2] == pytest.approx(1.0) and warped.sum() == pytest.approx(1.0)


def test_compose_order():
    def add(d):
        return lambda x: x + d

    def scale(s):
        return lambda x: x * s

    x = torch.ones(1, 2, 1, 1)
    assert torch.equal(compose(add(1.0), scale(3.0))(x), torch.full_like(x, 4.0))  # add(scale(x))


def test_untrained_network_is_the_identity():
    net = post_network()
    moving, fixed = random_images(4, seed=1), random_images(4, seed=2)
    with torch.no_grad():
        loss = net(moving, fixed)
    assert torch.equal(net.phi_AB_vectorfield, net.identity_map.expand(4, -1, -1, -1))
    assert torch.allclose(net.warped_image_A, moving, atol=1e-6)
    assert loss.bending_energy_loss == 0 and loss.transform_magnitude == 0 and loss.flips == 0
    assert loss.similarity_loss == pytest.approx(2 * torch.mean((moving - fixed) ** 2).item(), rel=1e-5)


def test_post_network_shares_one_fcnet_with_the_posts_sizes():
    net = post_network()
    fcnet = inner_fcnet(net)
    sizes = [(m.in_features, m.out_features) for m in (fcnet.dense1, fcnet.dense2, fcnet.dense3)]
    assert sizes == [(1568, 50), (50, 50), (50, 1568)]
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in fcnet.parameters()) == 160_968
    assert not fcnet.dense3.weight.any() and not fcnet.dense3.bias.any()


@pytest.fixture(scope="module")
def perturbed_net():
    return perturbed_post_network(std=1e-2)


def test_trace_shapes_and_step_zero(perturbed_net):
    moving, fixed = random_images(3, seed=4), random_images(3, seed=5)
    with torch.no_grad():
        trace = trace_steps(perturbed_net, moving, fixed)
    assert trace.warped.shape == (10, 3, 1, 28, 28)
    assert trace.displacement.shape == trace.phi.shape == (10, 3, 2, 28, 28)
    assert all(field.shape == (10, 3) for field in trace.losses)
    assert torch.equal(trace.phi[0], perturbed_net.identity_map.expand(3, -1, -1, -1))
    assert torch.allclose(trace.warped[0], moving, atol=1e-6)
    assert not trace.flips[0].any() and not trace.losses.bending_energy_loss[0].any()
    assert torch.allclose(trace.similarity[0], 2 * ((moving - fixed) ** 2).flatten(1).mean(1))
    assert trace.displacement[1:].abs().amax() > 0


def test_each_warped_image_is_the_moving_image_under_that_steps_transform(perturbed_net):
    moving, fixed = random_images(2, seed=6), random_images(2, seed=7)
    with torch.no_grad():
        trace = trace_steps(perturbed_net, moving, fixed)
    for k in range(10):
        assert torch.equal(trace.warped[k], as_function(moving)(trace.phi[k])), k
    assert not torch.equal(trace.phi[9], trace.phi[8])


def test_gradients_flow_through_the_trace(perturbed_net):
    moving, fixed = random_images(2, seed=8), random_images(2, seed=9)
    trace = trace_steps(perturbed_net, moving, fixed)
    trace.losses.all_loss[-1].sum().backward()
    grad = inner_fcnet(perturbed_net).dense1.weight.grad
    assert grad is not None and math.isfinite(grad.norm().item()) and grad.norm() > 0
    perturbed_net.zero_grad()


@pytest.mark.parametrize("steps, interpolations", [(1, 2), (2, 5), (5, 20), (9, 54)])
def test_interpolations_grow_quadratically_with_steps(steps, interpolations):
    """One inner call per step; level k re-evaluates all k earlier displacement fields, then warps A once."""
    from helpers.analysis import count_calls, count_interpolations

    inner = icon.FunctionFromVectorField(FCNet())
    net = icon.losses.DiffusionRegularizedNet(multistep(inner, steps), icon.ssd, lmbda=0.05)
    net.assign_identity_map((1, 1, 28, 28))
    with torch.no_grad(), count_calls(inner.net) as calls, count_interpolations() as interpolated:
        net(random_images(2), random_images(2, seed=3))
    assert calls[0] == steps
    assert interpolated[0] == interpolations == steps * (steps + 1) // 2 + steps
