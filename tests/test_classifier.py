"""The judges: shipped, frozen, accurate enough to trust; the nearest-image judge; calibration."""

import pytest
import torch

from helpers.classifier import (
    ARCHITECTURES,
    JUDGES,
    ClassifierResult,
    JudgeError,
    NearestNeighbourJudge,
    confusion,
    labelled_split,
    load_judge,
    load_judges,
    predict_proba,
    reliability,
    save_judge,
    train_classifier,
)


def test_labelled_split_has_every_digit_of_the_judges_split():
    images, labels = labelled_split("classifier")
    assert images.shape == (5996, 1, 28, 28)
    assert torch.bincount(labels).tolist() == [592, 674, 595, 613, 584, 542, 591, 626, 585, 594]


@pytest.fixture(scope="module")
def judges():
    return load_judges()


def test_three_shipped_judges_of_three_architectures(judges):
    assert len(judges) >= 3
    assert len({type(judge.model) for judge in judges.values()}) >= 2
    for judge in judges.values():
        assert isinstance(judge, ClassifierResult)
        assert not judge.model.training
        assert not any(parameter.requires_grad for parameter in judge.model.parameters())


def test_every_judge_reaches_98_percent_with_recall_for_5_and_7_of_97_percent(judges):
    images, labels = labelled_split("heldout")
    for name, judge in judges.items():
        counts = confusion(predict_proba(judge.model, images), labels)
        assert counts.sum() == 10000
        accuracy = counts.diag().sum().item() / 10000
        assert accuracy == pytest.approx(judge.heldout_accuracy)
        assert accuracy >= 0.98, name
        recall = counts.diag() / counts.sum(1)
        assert recall[5] >= 0.97 and recall[7] >= 0.97, (name, recall[5].item(), recall[7].item())


def test_judges_disagree_with_each_other_somewhere(judges):
    """Three copies of one judge would add nothing: on MNIST's test set they must not all err alike."""
    images, _ = labelled_split("heldout")
    predictions = torch.stack([predict_proba(judge.model, images).argmax(-1) for judge in judges.values()])
    assert (predictions != predictions[:1]).any(0).sum() >= 20


def test_a_judge_file_round_trips_and_a_wrong_file_is_refused(tmp_path):
    recipe = JUDGES["CNN judge"]
    model = ARCHITECTURES[recipe.architecture]()
    save_judge(tmp_path / "judge.pt", model, recipe)
    loaded, loaded_recipe = load_judge(tmp_path / "judge.pt")
    assert loaded_recipe == recipe
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="the recipe says 'cnn'"):
        save_judge(tmp_path / "other.pt", ARCHITECTURES["mlp"](), recipe)
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(JudgeError, match="is not a 'helpers-judge' file"):
        load_judge(tmp_path / "bad.pt")
    with pytest.raises(JudgeError, match="--group judges"):
        load_judge(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"unknown judge\(s\) \['oracle'\]"):
        load_judges(["oracle"])


def test_a_short_training_beats_chance_deterministically_and_in_any_thread_count():
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
    assert one.heldout_accuracy > 0.5 and one.heldout_accuracy == two.heldout_accuracy
    for a, b in zip(one.model.parameters(), two.model.parameters()):
        assert torch.equal(a, b)
    assert not one.model.training


def test_probabilities_keep_leading_axes(judges):
    model = judges["CNN judge"].model
    images = torch.rand(3, 4, 1, 28, 28)
    probabilities = predict_proba(model, images)
    assert probabilities.shape == (3, 4, 10)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3, 4))
    torch.testing.assert_close(probabilities[1, 2], predict_proba(model, images[1, 2:3])[0])


def test_bad_training_arguments_are_refused():
    with pytest.raises(ValueError, match="architecture must be one of"):
        train_classifier(architecture="transformer")
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train_classifier(epochs=0)


# --- the nearest-image judge --------------------------------------------------------------


def test_the_nearest_image_judge_names_the_nearest_references_digit():
    references = torch.zeros(3, 1, 28, 28)
    references[0, 0, :5] = 1    # a "0": ink in the top rows
    references[1, 0, -5:] = 1   # a "1": ink in the bottom rows
    references[2, 0, :, :5] = 1  # a "2": ink on the left
    labels = torch.arange(3)
    with pytest.raises(ValueError, match=r"no image of digit\(s\) \[3, 4, 5, 6, 7, 8, 9\]"):
        NearestNeighbourJudge(references, labels)
    filler = torch.full((7, 1, 28, 28), 0.5)  # digits 3..9, far from everything below
    judge = NearestNeighbourJudge(torch.cat([references, filler]), torch.arange(10))
    query = references[[1, 0, 2]].clone()
    query[0, 0, 10, 10] = 0.3  # a little off the "1"
    probabilities = predict_proba(judge, query)
    assert probabilities.argmax(-1).tolist() == [1, 0, 2]
    exact = judge(references[:1])
    assert exact[0, 0] == 0 and (exact[0, 1:] < 0).all()


def test_the_nearest_image_judge_is_a_fair_judge_of_5_against_7():
    """Positive control: on MNIST's test 5s and 7s, the nearest training-side image is of the
    right one of the two digits almost always; negative control: on pure noise it does not
    call everything a 5."""
    judge = NearestNeighbourJudge()
    images, labels = labelled_split("heldout")
    chosen = (labels == 5) | (labels == 7)
    probabilities = predict_proba(judge, images[chosen])
    five_or_seven = torch.where(probabilities[:, 5] > probabilities[:, 7], 5, 7)
    assert (five_or_seven == labels[chosen]).float().mean() > 0.97
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert (predict_proba(judge, noise).argmax(-1) == 5).float().mean() < 0.5


# --- calibration ---------------------------------------------------------------------------


def test_reliability_of_a_calibrated_and_an_overconfident_judge():
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(20000, generator=generator) * 0.8 + 0.2  # above the other classes' (1 − c) / 8
    correct = torch.rand(20000, generator=generator) < confidence
    labels = torch.zeros(20000, dtype=torch.long)
    probabilities = torch.zeros(20000, 10)
    probabilities[:, 0] = torch.where(correct, confidence, 0.0)
    probabilities[~correct, 1] = confidence[~correct]   # wrong: the top class is 1, with the same confidence
    rest = (1 - probabilities.sum(1, keepdim=True)) / 8
    probabilities[:, 2:] = rest
    calibrated = reliability(probabilities, labels)
    assert calibrated.expected_calibration_error < 0.02
    assert calibrated.count.sum() == 20000
    overconfident = probabilities.clone()
    overconfident[:, :2] = (overconfident[:, :2] > 0).float()  # every answer made certain
    overconfident[:, 2:] = 0
    assert reliability(overconfident, labels).expected_calibration_error > 0.2
    with pytest.raises(ValueError, match=r"need probabilities \[N, 10\]"):
        reliability(probabilities[:, :9], labels)
