"""The drift summary, on probabilities whose answer is known."""

import pytest
import torch

from helpers.analysis import drift_toward


def one_hot_steps(classes):
    """[K+1, B] predicted classes -> probabilities [K+1, B, 10] with 0.9 on that class."""
    classes = torch.tensor(classes)
    probabilities = torch.full((*classes.shape, 10), 0.1 / 9)
    probabilities.scatter_(-1, classes.unsqueeze(-1), 0.9)
    return probabilities


def test_drift_toward_five():
    # steps down, pairs across: pair 0 becomes a 5 at step 2 and leaves; pair 1 becomes a 5 at
    # step 1 and stays; pair 2 never does; pair 3 is a 5 from the start (not "became").
    probabilities = one_hot_steps([[7, 7, 7, 5], [7, 5, 7, 5], [5, 5, 7, 5], [7, 5, 7, 5]])
    drift = drift_toward(probabilities, 5)
    assert drift.became.tolist() == [True, True, False, False]
    assert drift.first_step.tolist() == [2, 1, -1, -1]
    assert drift.then_left.tolist() == [True, False, False, False]
    assert drift.probability.shape == (4, 4)
    assert drift.probability[0, 3] == pytest.approx(0.9)


def test_drift_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"expected probabilities \[K\+1, B, 10\]"):
        drift_toward(torch.zeros(4, 10), 5)
