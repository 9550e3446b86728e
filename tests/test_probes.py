"""Probes inside the weights: each one checked on a case whose answer is known."""

import pytest
import torch
import torch.nn.functional as F

from helpers import probes
from helpers.analysis import fixed_similarity, output_basis, trace_steps
from helpers.data import load_digits
from helpers.models import inner_fcnet

from conftest import perturbed_post_network


@pytest.fixture(scope="module")
def net():
    return perturbed_post_network(std=1e-3, seed=2)


@pytest.fixture(scope="module")
def pairs():
    sevens = load_digits(7, "heldout")
    return sevens[:6], sevens[6:12]


def test_shuffled_copy_keeps_each_layers_values_but_not_their_order(net):
    shuffled = probes.shuffled_copy(net, seed=1)
    for (name, before), after in zip(inner_fcnet(net).state_dict().items(), inner_fcnet(shuffled).state_dict().values()):
        assert torch.equal(before.flatten().sort().values, after.flatten().sort().values), name
        if before.numel() > 1 and before.unique().numel() > 1:
            assert not torch.equal(before, after), name
    assert inner_fcnet(shuffled) is not inner_fcnet(net)


def test_hidden_units_are_the_second_layers_activity(net, pairs):
    fcnet = inner_fcnet(net)
    moving, fixed = pairs
    expected = F.relu(fcnet.dense2(F.relu(fcnet.dense1(torch.cat([moving, fixed], 1).flatten(1)))))
    assert torch.allclose(probes.hidden_units(fcnet, moving, fixed), expected)
    with torch.no_grad():
        trace = trace_steps(net, moving, fixed)
    units = probes.trace_hidden_units(net, trace, fixed)
    assert units.shape == (9, 6, 50)
    torch.testing.assert_close(units[0], expected, rtol=1e-4, atol=1e-5)  # another batch shape: rounding differs
    with pytest.raises(ValueError, match="needs an FCNet"):
        probes.hidden_units(net, moving, fixed)


def test_linear_probe_reads_linear_targets_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 20, generator=generator)
    groups = torch.arange(400) // 4
    linear = features @ torch.randn(20, 3, generator=generator) + 5.0
    assert probes.linear_probe(features, linear, groups) > 0.99
    noise = torch.randn(400, generator=generator)
    assert probes.linear_probe(features, noise, groups) < 0.1
    with pytest.raises(ValueError, match="4 distinct groups"):
        probes.linear_probe(features, noise, torch.zeros(400, dtype=torch.long))
    with pytest.raises(ValueError, match="expected features"):
        probes.linear_probe(features, noise[:10], groups)


def test_linear_probe_leaves_out_units_that_fire_on_a_handful_of_fitting_rows():
    """A unit that fires on one fitting row, standardised by that tiny spread, turns its firing on
    held-out rows into huge predictions; the probe leaves such units out of that fit."""
    generator = torch.Generator().manual_seed(0)
    features = torch.relu(torch.randn(400, 10, generator=generator))
    groups = torch.arange(400) // 4
    target = features @ torch.randn(10, generator=generator) + 0.3 * torch.randn(400, generator=generator)
    # The probe's seeded split of the 100 groups into halves (seed 0), as linear_probe draws it.
    first = (torch.randperm(100, generator=torch.Generator().manual_seed(0)) < 50)[groups]
    rare = torch.zeros(400, 1)
    rare[first.nonzero()[0, 0]] = 0.05                          # one fitting row of the first half
    rare[(~first).nonzero()[:50, 0]] = 3.0                      # and a quarter of the other half
    with_rare = torch.cat([features, rare], 1)
    clean = probes.linear_probe(features, target, groups)
    assert clean > 0.8
    assert abs(probes.linear_probe(with_rare, target, groups) - clean) < 0.02
    assert probes.linear_probe(with_rare, target, groups, min_varying=0.0) < clean - 1, "unfiltered, the unit does harm"
    with pytest.raises(ValueError, match="min_varying"):
        probes.linear_probe(features, target, groups, min_varying=1.0)


def test_jacobian_of_a_linear_step_is_its_matrix(net, pairs):
    matrix = torch.randn(1568, 1568, generator=torch.Generator().manual_seed(1)) / 40

    def linear_step(_net, moving, fixed, phi_grid, offset):
        return (offset.flatten(1) @ matrix.T).reshape(offset.shape)

    moving, fixed = pairs
    phi = net.identity_map.expand(2, -1, -1, -1)
    jacobians = probes.jacobian(linear_step, net, moving[:2], fixed[:2], phi)
    assert jacobians.shape == (2, 1568, 1568)
    assert torch.allclose(jacobians[0], matrix, atol=2e-3)


def test_asymmetry():
    a = torch.randn(1, 30, 30, generator=torch.Generator().manual_seed(0))
    assert probes.asymmetry(a + a.transpose(1, 2)) < 1e-6
    assert probes.asymmetry(a - a.transpose(1, 2)).isinf().all()
    assert 0.7 < probes.asymmetry(a) < 1.4


def test_a_gradient_step_has_a_nearly_symmetric_jacobian_and_the_network_does_not(net, pairs):
    moving, fixed = pairs
    with torch.no_grad():
        trace = trace_steps(net, moving[:2], fixed[:2])
    state = trace.phi[3]  # away from the grid points, where bilinear interpolation has kinks
    gradient = probes.asymmetry(probes.jacobian(probes.descent_step, net, moving[:2], fixed[:2], state))
    network = probes.asymmetry(probes.jacobian(probes.step_field, net, moving[:2], fixed[:2], state))
    assert (gradient < 0.05).all() and (network > 0.5).all()


def test_energy_fit_recovers_known_weights(net, pairs):
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(3, 16, 40, generator=generator) for _ in range(3))
    fields = 2.0 * a - 0.5 * b + 0.01 * torch.randn(3, 16, 40, generator=generator)
    groups = torch.arange(16) // 2
    fit = probes.energy_fit(fields, {"a": a, "b": b, "c": c}, groups)
    assert fit.coefficients["a"] == pytest.approx(2.0, abs=0.02) and fit.coefficients["b"] == pytest.approx(-0.5, abs=0.02)
    assert abs(fit.coefficients["c"]) < 0.02 and fit.explained > 0.99
    partial = probes.energy_fit(fields, {"a": a, "b": b, "c": c}, groups, names=["a"])
    assert partial.explained == pytest.approx(4 / 4.25, abs=0.02), "a explains 4 of the 4.25 units of variance"
    with pytest.raises(ValueError, match="names must be terms"):
        probes.energy_fit(fields, {"a": a}, groups, names=["d"])


def test_energy_fit_per_step_finds_a_step_size_schedule(net, pairs):
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(3, 16, 40, generator=generator)
    schedule = torch.tensor([3.0, 1.0, -0.5]).view(3, 1, 1)
    fields = schedule * a + 0.01 * torch.randn(3, 16, 40, generator=generator)
    groups = torch.arange(16) // 2
    shared = probes.energy_fit(fields, {"a": a}, groups)
    stepwise = probes.energy_fit(fields, {"a": a}, groups, per_step=True)
    assert stepwise.coefficients["a"] == pytest.approx((3.0, 1.0, -0.5), abs=0.02) and stepwise.explained > 0.99
    assert shared.explained < 0.8, "one weight for every step cannot follow a schedule that changes sign"


def test_descent_directions_lie_in_the_networks_range(net, pairs):
    moving, fixed = pairs
    basis = output_basis(net)
    fields, directions = probes.descent_directions(net, moving, fixed, {"SSD": fixed_similarity}, basis)
    assert fields.shape == directions["SSD"].shape == (9, 6, 1568)
    inside = (directions["SSD"] @ basis) @ basis.T
    assert torch.allclose(inside, directions["SSD"], atol=1e-6)
    raw_fields, _ = probes.descent_directions(net, moving, fixed, {"SSD": fixed_similarity})
    assert torch.allclose(raw_fields, fields, atol=1e-5), "the network's own fields are in its range already"
