"""The per-pair optimiser: it lowers the loss, and pairs in a batch do not interact."""

import pytest
import torch

from helpers.classical import register_pairwise
from helpers.data import evaluation_pairs, load_digits


@pytest.fixture(scope="module")
def pairs():
    heldout = load_digits(5, "heldout")
    return heldout[:2], heldout[2:4]


def test_optimising_the_field_lowers_the_loss(pairs):
    result = register_pairwise(*pairs, iterations=60, lr=1e-2)
    similarity = result.history["similarity_loss"]
    assert similarity.shape == (60,)
    assert similarity[-1] < 0.5 * similarity[0]
    assert result.registration.losses.similarity_loss.shape == (2,)
    assert result.registration.warped_image_A.shape == (2, 1, 28, 28)
    assert result.seconds > 0


def test_pairs_in_a_batch_are_optimised_independently(pairs):
    moving, fixed = pairs
    together = register_pairwise(moving, fixed, iterations=30, lr=1e-2).registration
    alone = register_pairwise(moving[1:], fixed[1:], iterations=30, lr=1e-2).registration
    torch.testing.assert_close(together.phi_AB_vectorfield[1:], alone.phi_AB_vectorfield, atol=1e-4, rtol=0)


def test_bad_iterations(pairs):
    with pytest.raises(ValueError, match="iterations must be an int >= 1"):
        register_pairwise(*pairs, iterations=0)


def test_bad_images(pairs):
    with pytest.raises(ValueError, match="same shape"):
        register_pairwise(pairs[0], pairs[1][:1])


def test_pairwise_trace_is_the_optimisers_result_as_one_step():
    from helpers.analysis import StepTrace
    from helpers.classical import pairwise_trace

    moving, fixed = evaluation_pairs(5, 5, n=4)
    trace, seconds = pairwise_trace(moving, fixed, iterations=30)
    direct = register_pairwise(moving, fixed, iterations=30).registration
    assert isinstance(trace, StepTrace) and trace.warped.shape == (2, 4, 1, 28, 28) and seconds > 0
    assert torch.equal(trace.warped[0], moving) and torch.allclose(trace.warped[1], direct.warped_image_A)
    assert torch.allclose(trace.similarity[0], 2 * (moving - fixed).pow(2).flatten(1).mean(1))
    assert torch.allclose(trace.losses.all_loss[1], direct.losses.all_loss)
    assert (trace.flips[0] == 0).all() and (trace.losses.bending_energy_loss[0] == 0).all()
