"""The probe classifier: trained only on the classifier split, frozen, deterministic."""

import torch

from helpers.classifier import labelled_split, predict_proba, train_classifier


def test_labelled_split_has_every_digit():
    images, labels = labelled_split("classifier")
    assert images.shape == (1000, 1, 28, 28)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 100))


def test_a_short_training_beats_chance_deterministically_and_is_frozen():
    first, second = train_classifier(epochs=2, seed=1), train_classifier(epochs=2, seed=1)
    assert first.heldout_accuracy > 0.5
    assert first.heldout_accuracy == second.heldout_accuracy
    assert not first.model.training
    assert not any(parameter.requires_grad for parameter in first.model.parameters())


def test_probabilities_keep_leading_axes():
    model = train_classifier(epochs=1, seed=0).model
    images = torch.rand(3, 4, 1, 28, 28)
    probabilities = predict_proba(model, images)
    assert probabilities.shape == (3, 4, 10)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3, 4))
    torch.testing.assert_close(probabilities[1, 2], predict_proba(model, images[1, 2:3])[0])


def test_the_second_judge_is_another_architecture_and_the_thread_count_does_not_matter():
    from helpers.classifier import JUDGES, DigitMLP

    assert {settings["architecture"] for settings in JUDGES.values()} == {"cnn", "mlp"}
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            runs.append(train_classifier(epochs=1, seed=2, architecture="mlp"))
            assert torch.get_num_threads() == count, "train_classifier gives the caller's thread count back"
    finally:
        torch.set_num_threads(threads)
    one, two = runs
    assert isinstance(one.model, DigitMLP)
    for a, b in zip(one.model.parameters(), two.model.parameters()):
        assert torch.equal(a, b)
    assert one.heldout_accuracy > 0.5


def test_an_unknown_architecture_is_refused():
    import pytest

    with pytest.raises(ValueError, match="architecture must be one of"):
        train_classifier(architecture="transformer")
