"""Chapter 05's probes: step alignment with a gradient, extra steps, bootstrap intervals.

The gradient probe is checked where the answer is known: a step that is the descent direction
has cosine 1, the opposite step −1, a zero step has no direction; a small step along the
probe's direction lowers the real loss, the opposite one raises it.
"""

import pytest
import torch
from torch import nn

from helpers.analysis import (
    ClassifierSurprise, NearestImageSSD, bootstrap_interval, cosine, descent_direction, digit_transfer, fixed_similarity,
    outer_loss, output_basis, step_alignment, trace_steps,
)
from helpers.data import evaluation_pairs
from helpers.losses import DiffusionRegularizedNet, ssd
from helpers.models import multistep, post_network, with_steps
from helpers.registration import FunctionFromVectorField

from conftest import perturbed_post_network


class FixedField(nn.Module):
    """A 'network' that always outputs the same displacement field [B, 2, H, W]."""

    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, moving, fixed):
        return self.field


def fixed_field_net(field, steps=1, lmbda=0.05):
    net = DiffusionRegularizedNet(multistep(FunctionFromVectorField(FixedField(field)), steps), ssd, lmbda)
    net.assign_identity_map((1, 1, 28, 28))
    return net


@pytest.fixture(scope="module")
def pairs():
    return evaluation_pairs(5, 5, n=6, seed=0)


def smooth_field(batch, seed=0, scale=0.02):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 2, 4, 4, generator=generator) * scale
    return nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=True)


def test_cosine_is_one_toward_a_target_field_and_minus_one_away(pairs):
    """L = mean (φ(x) − x − T(x))²: its descent direction at the identity is T itself."""
    target = smooth_field(len(pairs[0]))

    def distance_to_target(registration):
        identity = registration.phi_AB_vectorfield.new_tensor(0) + net.identity_map
        return (registration.phi_AB_vectorfield - identity - target).pow(2).flatten(1).mean(1)

    for field, expected in ((target, 1.0), (-target, -1.0), (0.5 * target, 1.0)):
        net = fixed_field_net(field)
        alignment = step_alignment(net, *pairs, {"target": distance_to_target})["target"]
        assert alignment.cosine.shape == (1, len(target))
        assert torch.allclose(alignment.cosine, torch.tensor(expected), atol=1e-4)
        assert bool(alignment.lowered.all()) == (expected > 0)


def test_a_zero_step_has_no_direction_and_lowers_nothing(pairs):
    net = post_network()  # untrained: the last layer is zero, so every step is D = 0
    alignment = step_alignment(net, *pairs, {"outer": outer_loss})["outer"]
    assert alignment.cosine.shape == (9, len(pairs[0]))
    assert torch.isnan(alignment.cosine).all()
    assert not alignment.lowered.any()
    assert output_basis(net).shape == (28 * 28 * 2, 0)


@pytest.mark.parametrize("objective", [outer_loss, fixed_similarity])
def test_a_small_step_along_the_probe_lowers_the_real_loss(pairs, objective):
    moving, fixed = pairs
    probe = fixed_field_net(torch.zeros(len(moving), 2, 28, 28))
    downhill = descent_direction(probe, lambda x: x, moving, fixed, objective)
    step = 1e-3 * downhill / downhill.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    for field, sign in ((step, 1), (-step, -1)):
        alignment = step_alignment(fixed_field_net(field), moving, fixed, {"L": objective})["L"]
        assert torch.allclose(alignment.cosine, torch.tensor(float(sign)), atol=1e-4)
        assert bool(alignment.lowered.all()) == (sign > 0), "a small step downhill lowers L, uphill raises it"


@pytest.mark.parametrize("earlier_steps", [0, 2])
def test_the_gradient_matches_finite_differences(pairs, earlier_steps):
    """Central difference of L_k at 0 along a smooth v equals ⟨∇L_k(0), v⟩, at step 1 (E = 0 on
    the kinks of every interpolation) and at step 3 (after two steps of a network)."""
    moving, fixed = pairs
    net = perturbed_post_network(std=3e-3)
    before = lambda x: x  # noqa: E731
    if earlier_steps:
        with torch.no_grad():
            before = list(net.regis_net.steps(moving, fixed))[earlier_steps - 1].transform
    v = smooth_field(len(moving), seed=1, scale=0.1)
    gradient = -descent_direction(net, before, moving, fixed, outer_loss, offset=0.001)
    from helpers.warping import compose, displacement_transform

    def loss(field):
        with torch.no_grad():
            return outer_loss(net.evaluate(compose(before, displacement_transform(field)), moving, fixed)).double()

    # |εv| ≈ 0.0008 pixels, inside the ±0.001-pixel box the symmetric gradient averages over: the
    # loss is only piecewise smooth (every bilinear interpolation has kinks at its grid points).
    eps = 3e-4
    finite = (loss(eps * v) - loss(-eps * v)) / (2 * eps)
    analytic = (gradient * v).flatten(1).sum(1).double()
    # Agreement to a few per cent (the loss is piecewise smooth at every scale); a wrong sign, a
    # wrong factor or a gradient taken in the wrong frame would be far off.
    assert torch.allclose(finite, analytic, rtol=0.1, atol=1e-3 * analytic.abs().max())


def test_alignment_agrees_with_the_trace_and_the_range_bound(pairs):
    net = perturbed_post_network(std=3e-4)
    basis = output_basis(net)
    assert basis.shape == (28 * 28 * 2, 50)  # the 50 columns of the last layer (its bias is zero)
    assert torch.allclose(basis.T @ basis, torch.eye(50), atol=1e-4)
    alignment = step_alignment(net, *pairs, {"outer": outer_loss}, basis=basis)["outer"]
    with torch.no_grad():
        trace = trace_steps(net, *pairs)
    assert torch.allclose(alignment.after, trace.losses.all_loss[1:])
    assert torch.allclose(alignment.before, trace.losses.all_loss[:-1])
    # The fields lie in the range, so projecting the gradient onto it can only raise |cosine|.
    assert (alignment.range_cosine.abs() >= alignment.cosine.abs() - 1e-5).all()


def test_cosine_rejects_nothing_silently():
    assert cosine(torch.ones(2, 3), torch.ones(2, 3)).tolist() == pytest.approx([1.0, 1.0])
    assert torch.isnan(cosine(torch.zeros(1, 3), torch.ones(1, 3))).all()


def test_step_alignment_needs_objectives_and_a_sensible_offset(pairs):
    with pytest.raises(ValueError, match="objectives is empty"):
        step_alignment(post_network(), *pairs, {})
    with pytest.raises(ValueError, match=r"offset must be a number of pixels in \(0, 1\)"):
        step_alignment(post_network(), *pairs, {"outer": outer_loss}, offset=0)


def test_nearest_image_ssd_finds_the_closest_reference(pairs):
    moving, fixed = pairs
    nearest = NearestImageSSD(fixed)
    registration = post_network().register(fixed, moving)  # identity: warped = fixed
    assert torch.allclose(nearest(registration), torch.zeros(len(fixed)), atol=1e-6)
    brute = ((moving.unsqueeze(1) - fixed.unsqueeze(0)) ** 2).flatten(2).mean(2).amin(1)
    assert torch.allclose(nearest(post_network().register(moving, fixed)), brute, atol=1e-6)
    with pytest.raises(ValueError, match=r"references must be a non-empty tensor \[R, C, H, W\]"):
        NearestImageSSD(fixed[0])


def test_classifier_surprise_checks_its_digit():
    with pytest.raises(ValueError, match="digit must be an int in 0..9"):
        ClassifierSurprise(nn.Identity(), 10)


def test_with_steps_runs_the_same_inner_network_longer(pairs):
    net = perturbed_post_network(std=3e-4)
    longer = with_steps(net, 12)
    assert {id(p) for p in longer.parameters()} == {id(p) for p in net.parameters()}
    with torch.no_grad():
        short, long = trace_steps(net, *pairs), trace_steps(longer, *pairs)
    assert long.warped.shape[0] == 13
    assert torch.equal(long.phi[:10], short.phi)
    assert longer.lmbda == net.lmbda
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        with_steps(net, 0)


def test_bootstrap_interval_of_a_mean():
    values = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 3.0
    interval = bootstrap_interval(values, seed=1)
    assert interval.low < interval.estimate < interval.high
    assert interval.estimate == pytest.approx(float(values.mean()))
    # Width of a 95% interval of a mean: about 2 · 1.96 · σ / √n.
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * float(values.std()) / 20, rel=0.15)
    assert bootstrap_interval(values, seed=1) == interval
    assert bootstrap_interval(values, seed=2) != interval
    constant = bootstrap_interval(torch.full((10,), 0.5))
    assert constant.low == constant.estimate == constant.high == 0.5
    assert str(constant) == "0.50 [0.50, 0.50]"
    assert f"{constant:.3f}" == "0.500 [0.500, 0.500]"


def test_bootstrap_interval_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN or inf"):
        bootstrap_interval(torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        bootstrap_interval(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        bootstrap_interval(torch.ones(5), level=95)
    with pytest.raises(ValueError, match="statistic must reduce the values to a scalar"):
        bootstrap_interval(torch.ones(5, 2), statistic=lambda values: values.mean(0))


def test_digit_transfer_of_identity_networks_changes_nothing():
    uniform = lambda images: torch.full((len(images), 10), 0.1)  # noqa: E731
    transfer = digit_transfer({5: post_network(), 7: post_network()}, uniform, eval_digits=[1, 5, 7], n=4)
    assert transfer.similarity_ratio.shape == (2, 3, 4) and transfer.probability.shape == (2, 3, 10, 4, 10)
    assert torch.allclose(transfer.similarity_ratio, torch.ones(2, 3, 4))
    assert (transfer.folds == 0).all() and (transfer.drift(5) == 0).all()
    with pytest.raises(ValueError, match="nets is empty"):
        digit_transfer({}, uniform)
    with pytest.raises(ValueError, match="different numbers of steps"):
        digit_transfer({5: post_network(), 7: post_network(steps=3)}, uniform, eval_digits=[1], n=2)


def test_digit_transfer_scores_the_input_and_the_result():
    """A classifier that reads ink: a network that moves pixels changes what it sees."""
    ink = lambda images: torch.nn.functional.one_hot(  # noqa: E731
        (images.flatten(1).sum(1) > 100).long() * 5, 10).float()
    transfer = digit_transfer({5: perturbed_post_network(std=3e-2)}, ink, eval_digits=[0], n=8)
    assert (transfer.similarity_ratio != 1).all()
    assert torch.equal(transfer.probability[0, 0, 0], ink(evaluation_pairs(0, 0, 8)[0]))
    with torch.no_grad():
        net = perturbed_post_network(std=3e-2)
        warped = trace_steps(net, *evaluation_pairs(0, 0, 8)).warped
    assert torch.equal(transfer.probability[0, 0, 4], ink(warped[4]))


def test_chapter_05_figures_label_what_they_show(pairs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers import plotting

    fig, ax = plt.subplots()
    plotting.show_matrix(ax, torch.arange(6.0).reshape(2, 3) / 10, ["a", "b"], [1, 2, 3], xlabel="x", ylabel="y")
    assert [text.get_text() for text in ax.texts] == ["0.00", "0.10", "0.20", "0.30", "0.40", "0.50"]
    assert ax.get_xlabel() == "x" and [label.get_text() for label in ax.get_yticklabels()] == ["a", "b"]
    with torch.no_grad():
        trace = trace_steps(with_steps(perturbed_post_network(std=3e-4), 12), *pairs)
    fig = plotting.plot_long_run({"pairs": trace}, trained_steps=9)
    assert [ax.get_xlabel() for ax in fig.axes] == ["registration step k"] * 3
    assert len(fig.axes[0].lines[0].get_xdata()) == 13
    fig = plotting.plot_tradeoff({"family": ((0.1, 0.2), torch.tensor([0.2, 0.3]), torch.tensor([3.0, 1.0]))})
    assert fig.axes[0].get_ylabel() == "held-out similarity loss (mean)"
    assert [text.get_text() for text in fig.axes[0].texts] == ["λ=0.1", "λ=0.2"]
    plt.close("all")
