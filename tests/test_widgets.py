"""The step scrubber, driven without a browser: move the sliders, check what is drawn."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from helpers.analysis import trace_steps
from conftest import perturbed_post_network
from helpers.plotting import grid_lines, plot_steps
from helpers.widgets import StepScrubber


@pytest.fixture(scope="module")
def scrubbed():
    net = perturbed_post_network(std=2e-2)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        moving, fixed = torch.rand(3, 1, 28, 28, generator=generator), torch.rand(3, 1, 28, 28, generator=generator)
        trace = trace_steps(net, moving, fixed)
    return StepScrubber(trace, fixed), trace, fixed


def test_initial_view_is_step_zero(scrubbed):
    scrubber, trace, fixed = scrubbed
    scrubber.pair.value, scrubber.step.value = 0, 0
    shown = scrubber.shown_arrays()
    np.testing.assert_array_equal(shown["warped"], trace.warped[0, 0, 0].numpy())
    assert not shown["displacement_u"].any()
    assert "step 0" in shown["title"] and "folded cells 0" in shown["title"]


@pytest.mark.parametrize("pair, step", [(0, 3), (2, 9), (1, 1)])
def test_moving_the_sliders_redraws_every_panel(scrubbed, pair, step):
    scrubber, trace, fixed = scrubbed
    scrubber.pair.value = pair
    scrubber.step.value = step
    shown = scrubber.shown_arrays()
    warped = trace.warped[step, pair, 0].numpy()
    np.testing.assert_array_equal(shown["warped"], warped)
    np.testing.assert_array_equal(shown["fixed"], fixed[pair, 0].numpy())
    np.testing.assert_allclose(shown["difference"], warped - fixed[pair, 0].numpy())
    expected_rows = np.stack([y for _, y in grid_lines(trace.phi[step, pair])[: len(shown["grid_rows"])]])
    np.testing.assert_allclose(shown["grid_rows"], expected_rows)
    expected_u = trace.displacement[step, pair, 1, ::2, ::2].numpy().ravel() * 27
    np.testing.assert_allclose(shown["displacement_u"], expected_u, rtol=1e-6)
    assert f"pair {pair}, step {step}:" in shown["title"]
    assert f"{trace.similarity[step, pair]:.4f}" in shown["title"]


def test_slider_ranges(scrubbed):
    scrubber, trace, _ = scrubbed
    assert (scrubber.step.min, scrubber.step.max) == (0, 9)
    assert (scrubber.pair.min, scrubber.pair.max) == (0, 2)


def test_static_small_multiples(scrubbed):
    _, trace, fixed = scrubbed
    fig = plot_steps(trace, fixed, pair=1)
    assert len(fig.axes) == 30
    np.testing.assert_array_equal(fig.axes[4].images[0].get_array(), trace.warped[4, 1, 0].numpy())
