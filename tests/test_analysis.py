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


def test_nearest_distance_is_the_closest_references_mean_squared_difference():
    from helpers.analysis import nearest_distance

    references = torch.stack([torch.full((1, 4, 4), value) for value in (0.0, 0.5, 1.0)])
    images = torch.stack([torch.full((1, 4, 4), 0.4), torch.full((1, 4, 4), 0.9)])
    torch.testing.assert_close(nearest_distance(images, references), torch.tensor([0.01, 0.01], dtype=torch.float64))
    with pytest.raises(ValueError, match="of one size"):
        nearest_distance(images, torch.zeros(2, 1, 5, 5))


def test_memorisation_gap_finds_planted_memorisation_and_not_mere_likeness():
    """Positive control: slightly changed training 5s are nearer the training 5s than unseen 5s.
    Negative control: unseen 5s of the same kind (MNIST's test 5s) are not."""
    from helpers.analysis import memorisation_gap
    from helpers.data import load_digits, random_affine

    seen, unseen = load_digits(5, "train")[:300], load_digits(5, "classifier")[:300]
    generator = torch.Generator().manual_seed(0)
    copies = random_affine(seen[:100], 0.2, generator)
    test_fives = load_digits(5, "heldout")[:100]
    planted, honest = memorisation_gap(copies, seen, unseen), memorisation_gap(test_fives, seen, unseen)
    assert planted.mean() > 5 * honest.abs().mean() and (planted > 0).float().mean() > 0.9
    assert abs(honest.mean()) < 0.25 * planted.mean()
    bigger = memorisation_gap(test_fives, load_digits(5, "train"), unseen, draws=3)
    assert bigger.shape == (100,) and abs(bigger.mean()) < 0.25 * planted.mean()
    with pytest.raises(ValueError, match="at least as many seen images"):
        memorisation_gap(test_fives, unseen[:10], seen)
