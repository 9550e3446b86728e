"""The step scrubber, driven without a browser: move the sliders, check what is drawn."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from helpers.analysis import trace_steps
from conftest import perturbed_post_network
from helpers.plotting import grid_lines, plot_steps
from helpers.classical import register_pairwise
from helpers.data import load_digits
from helpers.widgets import LambdaScrubber, StepScrubber


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


@pytest.fixture(scope="module")
def swept():
    fives = load_digits(5, "heldout")
    moving, fixed = fives[:2], fives[2:4]
    results = {lmbda: register_pairwise(moving, fixed, lmbda=lmbda, iterations=30, lr=1e-2).registration for lmbda in (0.0, 0.05, 5.0)}
    return LambdaScrubber(results, moving, fixed, pair=1, value=0.05), results, moving, fixed


@pytest.mark.parametrize("lmbda", [0.05, 0.0, 5.0])
def test_the_lambda_slider_redraws_that_lambdas_result(swept, lmbda):
    scrubber, results, moving, fixed = swept
    assert [value for _, value in scrubber.slider.options] == [0.0, 0.05, 5.0]
    scrubber.slider.value = lmbda
    shown, result = scrubber.shown_arrays(), results[lmbda]
    np.testing.assert_array_equal(shown["warped"], result.warped_image_A[1, 0].numpy())
    np.testing.assert_allclose(shown["difference"], result.warped_image_A[1, 0].numpy() - fixed[1, 0].numpy())
    expected_rows = np.stack([y for _, y in grid_lines(result.phi_AB_vectorfield[1])[: len(shown["grid_rows"])]])
    np.testing.assert_allclose(shown["grid_rows"], expected_rows)
    assert shown["title"].startswith(f"λ = {lmbda:g}: similarity loss {float(result.losses.similarity_loss[1]):.4f}")


def test_the_lambda_slider_refuses_what_was_not_swept(swept):
    _, results, moving, fixed = swept
    with pytest.raises(ValueError, match=r"value must be one of the swept λ \[0.0, 0.05, 5.0\], got 0.1"):
        LambdaScrubber(results, moving, fixed, value=0.1)
    with pytest.raises(ValueError, match="results is empty"):
        LambdaScrubber({}, moving, fixed)
