"""The compiled sampler computes what grid_sample computes, values and gradients.

tests/test_reference.py checks the whole network against icon_registration with the
default (compiled) sampler; here each operation is compared with the grid_sample
reference on inputs chosen to reach every branch: points inside, on and past the
border, on the pixel grid itself, shared and per-image coordinates, long chains.
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import engine
from helpers.engine import kernel
from helpers.coordinates import identity_map
from helpers.warping import DisplacementChain, compose, displacement_transform, interpolate

pytestmark = pytest.mark.skipif(
    kernel.compiled_kernel() is None, reason="no C compiler here: only the reference sampler runs"
)


def smooth_field(batch, size=28, amplitude=0.05, seed=0):
    """A displacement field that varies like a registration's: smooth, a few pixels in size."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 2, 5, 5, generator=generator) * amplitude
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)


def both(function, inputs):
    """function(*inputs) and the gradients of a nonlinear scalar of it, under each engine."""
    results = {}
    for name in engine.IMPLEMENTATIONS:
        leaves = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
        with engine.using(name):
            out = function(*leaves)
        differentiable = [x for x in leaves if x.requires_grad]
        grads = torch.autograd.grad((out * torch.sin(3 * out)).sum(), differentiable)
        results[name] = (out, *grads)
    return results


def assert_same(results, rtol=1e-5):
    for compiled, reference in zip(results["compiled"], results["reference"], strict=True):
        scale = reference.abs().max().item()
        torch.testing.assert_close(compiled, reference, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("shared", [False, True], ids=["per-image points", "shared points"])
def test_sample_matches_grid_sample(channels, shared):
    values = torch.rand(4, channels, 28, 28, requires_grad=True)
    # Points spread over [-0.1, 1.1]²: inside, on the border and clamped beyond it.
    points = (torch.rand(1 if shared else 4, 2, 20, 24) * 1.2 - 0.1).requires_grad_()
    assert_same(both(interpolate, (values, points)))


def test_sample_on_a_rectangular_image():
    values = torch.rand(3, 2, 17, 31, requires_grad=True)
    points = (torch.rand(3, 2, 9, 5) * 1.2 - 0.1).requires_grad_()
    assert_same(both(interpolate, (values, points)))


@pytest.mark.parametrize("length", [1, 2, 9, 40])
def test_chain_matches_composed_grid_samples(length):
    fields = [smooth_field(5, seed=k).requires_grad_() for k in range(length)]

    def chain(*fields):
        return DisplacementChain(fields)(identity_map((1, 1, 28, 28)))

    assert_same(both(chain, fields))


def test_chain_off_the_grid_with_coordinate_gradients():
    fields = [smooth_field(3, seed=k).requires_grad_() for k in range(4)]
    points = (identity_map((1, 1, 28, 28)).repeat(3, 1, 1, 1) + smooth_field(3, seed=99)).requires_grad_()

    def chain(points, *fields):
        return DisplacementChain(fields)(points)

    assert_same(both(chain, [points, *fields]))


@pytest.mark.parametrize("on_grid", [True, False], ids=["on the grid", "off the grid"])
def test_chain_on_a_rectangular_image_with_leftover_points(on_grid):
    # The kernel takes points eight at a time: 11 × 13 = 143 and 5 × 7 = 35 points leave
    # 7 and 3 over, which take the one-point path.
    fields = [(torch.randn(3, 2, 11, 13, generator=torch.Generator().manual_seed(k)) * 0.05).requires_grad_()
              for k in range(3)]
    if on_grid:
        points = identity_map((1, 1, 11, 13))
    else:
        points = (torch.rand(3, 2, 5, 7, generator=torch.Generator().manual_seed(7)) * 1.2 - 0.1).requires_grad_()

    def chain(points, *fields):
        return DisplacementChain(fields)(points)

    assert_same(both(chain, [points, *fields]))


def test_nan_points_stay_nan_through_a_chain():
    fields = [smooth_field(1, seed=k) for k in range(3)]
    points = identity_map((1, 1, 28, 28)).clone()
    points[0, 0, 3, 4] = float("nan")  # inside the first group of eight points of row 3
    points[0, 1, 27, 27] = float("nan")
    out = DisplacementChain(fields)(points)
    # A NaN coordinate stays NaN (p + D(p)); the other coordinate of the point moves on as
    # if the NaN were 0, exactly as with grid_sample.
    assert out[0, 0, 3, 4].isnan() and out[0, 1, 27, 27].isnan() and out.isnan().sum() == 2
    with engine.using("reference"):
        reference = DisplacementChain(fields)(points)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6, equal_nan=True)


def test_shared_coordinates_get_the_batch_sum_of_gradients():
    fields = [smooth_field(3, seed=k).requires_grad_() for k in range(3)]
    points = (identity_map((1, 1, 28, 28)) + 0.01).requires_grad_()

    def chain(points, *fields):
        return DisplacementChain(fields)(points)

    results = both(chain, [points, *fields])
    assert results["compiled"][1].shape == points.shape
    assert_same(results)


def test_a_batch_of_one_field_is_broadcast_to_the_points():
    field = smooth_field(1).requires_grad_()
    points = (identity_map((1, 1, 28, 28)).repeat(3, 1, 1, 1) + smooth_field(3, seed=5)).requires_grad_()
    assert_same(both(lambda p, d: DisplacementChain([d])(p), [points, field]))


def test_composing_chains_joins_them_in_order():
    phi, psi = displacement_transform(smooth_field(2, seed=1)), displacement_transform(smooth_field(2, seed=2))
    grid = identity_map((1, 1, 28, 28))
    composed = compose(phi, psi)
    assert isinstance(composed, DisplacementChain) and len(composed.displacements) == 2
    torch.testing.assert_close(composed(grid), phi(psi(grid)), rtol=0, atol=1e-6)
    assert (compose(psi, phi)(grid) - composed(grid)).abs().max() > 1e-3


def test_a_field_first_used_without_gradients_still_passes_them_on_later():
    field = smooth_field(2).requires_grad_()
    phi, grid = displacement_transform(field), identity_map((1, 1, 28, 28))
    with torch.no_grad():
        phi(grid)  # the channels-last copy is made here, outside autograd
    phi(grid).square().sum().backward()
    with engine.using("reference"):
        expected = torch.autograd.grad(displacement_transform(field)(grid).square().sum(), field)[0]
    torch.testing.assert_close(field.grad, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_a_field_changed_in_place_is_copied_again():
    values = smooth_field(1)
    phi, grid = displacement_transform(values), identity_map((1, 1, 28, 28))
    before = phi(grid)
    values.mul_(2)
    torch.testing.assert_close(phi(grid) - grid, 2 * (before - grid), rtol=0, atol=1e-5)


def growing_chains(fields, grid):
    """The post's world in miniature: chain k walks fields 1..k, so field j is read by the
    chains j..K (and a field twice by the last chain); a loss mixes every chain's output."""
    shared = list(fields)
    chains = [DisplacementChain(shared[: k + 1])(grid) for k in range(len(shared))]
    chains.append(DisplacementChain([*shared, shared[0]])(grid))
    return sum((out * torch.sin(3 * out)).sum() for out in chains)


def test_a_field_read_by_several_chains_gets_the_sum_of_their_gradients():
    fields = [smooth_field(2, seed=k, amplitude=0.08).requires_grad_() for k in range(4)]
    grid = identity_map((1, 1, 28, 28))
    with engine.using("reference"):
        expected = torch.autograd.grad(growing_chains(fields, grid), fields)
    got = torch.autograd.grad(growing_chains(fields, grid), fields)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5 * e.abs().max().item())


def test_a_field_s_gradient_does_not_leak_from_one_backward_pass_into_the_next():
    fields = [smooth_field(2, seed=k, amplitude=0.08).requires_grad_() for k in range(3)]
    points = (identity_map((1, 1, 28, 28)) + 0.01).requires_grad_()
    shared = list(fields)
    chains = [DisplacementChain(shared[: k + 1]) for k in range(3)]
    loss = sum((chain(points) ** 2).sum() for chain in chains)
    once = torch.autograd.grad(loss, fields, retain_graph=True)
    torch.autograd.grad(loss, [points], retain_graph=True)  # the chains run, the fields' copies do not
    again = torch.autograd.grad(loss, fields, retain_graph=True)
    loss.backward(retain_graph=True)
    loss.backward()  # accumulates into .grad: exactly twice one pass
    for a, b, field in zip(once, again, fields, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(field.grad, 2 * a)


def test_the_portable_build_of_the_kernel_gives_the_same_floats():
    """Older GCC (11, as on Colab) lacks __builtin_shufflevector, and the kernel then joins and
    splits vectors through memory; -DHELPERS_PORTABLE_SHUFFLES takes that path here."""
    portable = kernel.build(["-DHELPERS_PORTABLE_SHUFFLES"])
    assert portable._name != kernel.compiled_kernel()._name  # a separate build
    fields = [smooth_field(3, seed=k, amplitude=0.08).requires_grad_() for k in range(5)]
    points = (torch.rand(3, 2, 13, 9, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1).requires_grad_()
    images = torch.rand(3, 2, 28, 28, requires_grad=True)

    def run():
        warped = interpolate(images, DisplacementChain(fields)(points))
        on_grid = DisplacementChain(fields)(identity_map((1, 1, 28, 28)))
        outputs = (warped, on_grid)
        grads = torch.autograd.grad(sum((out * torch.sin(3 * out)).sum() for out in outputs), [images, points, *fields])
        return (*outputs, *grads)

    default = run()
    shipped, kernel._library = kernel._library, portable
    try:
        again = run()
    finally:
        kernel._library = shipped
    for a, b in zip(default, again, strict=True):
        assert torch.equal(a, b)


def test_the_reference_is_used_for_float64_and_on_request():
    values = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    points = torch.rand(2, 2, 28, 28, dtype=torch.float64)
    assert interpolate(values, points).dtype == torch.float64
    with engine.using("reference"):
        assert engine.active(torch.zeros(1)) == "reference"
    assert engine.active(torch.zeros(1)) == "compiled"


def test_nan_coordinates_give_nan_not_a_border_value():
    values = torch.rand(1, 2, 28, 28)
    points = torch.rand(1, 2, 4, 4)
    points[0, 1, 2, 3] = float("nan")
    out = interpolate(values, points)
    assert out[0, :, 2, 3].isnan().all() and out.isnan().sum() == 2


def test_unknown_sampler_names_are_rejected():
    with pytest.raises(ValueError, match="unknown sampler 'fast'"):
        with engine.using("fast"):
            pass


def test_mismatched_batches_are_an_error():
    chain = DisplacementChain([smooth_field(3)])
    with pytest.raises(ValueError, match=r"batch sizes \[2, 3\] differ"):
        chain(identity_map((1, 1, 28, 28)).repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="one or more fields"):
        DisplacementChain([smooth_field(2), smooth_field(2, size=14)])


@pytest.mark.parametrize("implementation", engine.IMPLEMENTATIONS)
def test_chain_rejects_fields_smaller_than_two_by_two(implementation):
    """A one-pixel-high field has no cell to interpolate in (the kernel would read before it)."""
    with engine.using(implementation):
        for shape in [(1, 2, 1, 5), (1, 2, 5, 1)]:
            with pytest.raises(ValueError, match="at least 2×2 pixels"):
                engine.chain([torch.zeros(shape)], torch.rand(1, 2, 3, 3))
            with pytest.raises(ValueError, match="at least 2×2 pixels"):
                DisplacementChain([torch.zeros(shape)])(torch.rand(1, 2, 3, 3))


def second_derivatives(field, points):
    """d/d field of |d loss / d points|², through a warp and a chain: needs create_graph=True."""
    image = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    loss = interpolate(image, DisplacementChain([field])(points)).square().sum()
    (grad_points,) = torch.autograd.grad(loss, points, create_graph=True)
    return torch.autograd.grad(grad_points.square().sum(), field)[0]


def test_higher_order_gradients_need_the_reference_sampler_and_say_so():
    field = smooth_field(2).requires_grad_()
    points = (identity_map((1, 1, 28, 28)).repeat(2, 1, 1, 1) + smooth_field(2, seed=4)).requires_grad_()
    with pytest.raises(RuntimeError, match="HELPERS_SAMPLER=reference"):
        second_derivatives(field, points)
    with engine.using("reference"):
        assert second_derivatives(field, points).abs().max() > 0

    def warped_energy(points):
        return interpolate(torch.rand(2, 1, 28, 28), points).square().sum()

    with pytest.raises(RuntimeError, match="HELPERS_SAMPLER=reference"):
        torch.func.grad(warped_energy)(points.detach())
    with engine.using("reference"):
        assert torch.func.grad(warped_energy)(points.detach()).shape == points.shape


def test_channels_last_copies_are_forgotten_with_their_fields():
    """The copies shared by chains live as long as their fields, and keep no field alive."""
    import gc
    import weakref

    from helpers.engine import compiled

    grid, before = identity_map((1, 1, 28, 28)), len(compiled._copies)
    weights = smooth_field(2).requires_grad_()
    output = weights * 1.0  # a field a network returned: shared, one copy for both chains
    chain = DisplacementChain([output])
    (compose(chain, chain)(grid) + chain(grid)).square().sum().backward()
    assert len(compiled._copies) == before + 1
    optimised = smooth_field(2).requires_grad_()  # a leaf, as in classical registration: no cached copy
    DisplacementChain([optimised])(grid).square().sum().backward()
    assert len(compiled._copies) == before + 1
    alive = [weakref.ref(t) for t in (weights, output, optimised)]
    del weights, output, chain, optimised
    gc.collect()
    assert len(compiled._copies) == before and all(ref() is None for ref in alive)
