"""Claims over seeds (and judges): the crossed bootstraps, on values whose answer is known."""

import pytest
import torch

from helpers.data import evaluation_indices, evaluation_pairs, load_digits
from helpers.ensembles import over_images, over_judges, over_runs, over_seeds


def test_per_seed_values_and_the_grand_mean():
    values = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    summary = over_seeds(values, torch.tensor([0, 1, 2, 3]))
    assert summary.per_seed == (0.5, 1.0, 0.0)
    assert summary.estimate == pytest.approx(0.5)
    assert summary.spread == (0.0, 1.0)
    assert (summary.seeds, summary.images, summary.pairs) == (3, 4, 4)
    assert summary.holds_in(lambda value: value > 0.2) == 2
    assert f"{summary:.1f}" == f"0.5 [{summary.low:.1f}, {summary.high:.1f}] (seeds 0.0–1.0)"


def test_the_interval_widens_with_the_seed_to_seed_spread():
    """Same pairs, same within-seed noise; only the spread between seeds differs."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(5, 200, generator=generator, dtype=torch.float64)
    images = torch.arange(200)
    alike = over_seeds(noise + 1.0, images)
    apart = over_seeds(noise + torch.linspace(0, 2, 5, dtype=torch.float64).unsqueeze(1), images)
    assert apart.estimate == pytest.approx(alike.estimate)
    assert apart.high - apart.low > 3 * (alike.high - alike.low)
    assert alike.low < 1.0 < alike.high


def test_over_judges_widens_with_the_judge_to_judge_spread_and_reports_it():
    """Same seeds, same pairs; only the judges' offsets differ. With judges that agree, the
    interval is the seeds-and-images one (judges resampled add nothing)."""
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(5, 200, generator=generator, dtype=torch.float64)
    images = torch.arange(200)
    agree = over_judges(noise.expand(3, -1, -1) + 1.0, images)
    plain = over_seeds(noise + 1.0, images)
    assert agree.estimate == pytest.approx(plain.estimate)
    assert agree.high - agree.low == pytest.approx(plain.high - plain.low, rel=0.15)
    offsets = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64).view(3, 1, 1)
    apart = over_judges(noise + offsets, images)
    assert apart.per_judge == pytest.approx(tuple((noise.mean() + offsets.flatten()).tolist()))
    assert apart.judge_spread == (min(apart.per_judge), max(apart.per_judge))
    assert apart.high - apart.low > 3 * (agree.high - agree.low)
    assert (apart.seeds, apart.images, apart.pairs) == (5, 200, 200)
    low, high = apart.judge_spread
    assert f"{apart:.1f}" == (f"{apart.estimate:.1f} [{apart.low:.1f}, {apart.high:.1f}] (seeds "
                              f"{min(apart.per_seed):.1f}–{max(apart.per_seed):.1f}; judges {low:.1f}–{high:.1f})")
    one_run = over_judges(noise[:1].expand(3, -1, -1) + offsets, images)   # a method without seeds
    assert "seeds" not in f"{one_run}" and one_run.seeds == 1
    with pytest.raises(ValueError, match=r"values must be \[judges >= 2, seeds, pairs >= 2\]"):
        over_judges(noise, images)


def test_repeated_images_count_once():
    """Pairs that share a moving image are resampled together: 100 pairs of 2 images are
    not 100 independent observations, so the interval is much wider than a pair bootstrap's."""
    values = torch.cat([torch.zeros(50), torch.ones(50)]).repeat(3, 1)
    two_images = over_seeds(values, torch.cat([torch.zeros(50), torch.ones(50)]).long())
    hundred_images = over_seeds(values, torch.arange(100))
    assert two_images.images == 2 and hundred_images.images == 100
    assert two_images.high - two_images.low > 3 * (hundred_images.high - hundred_images.low)


def test_it_is_seeded():
    values = torch.rand(5, 30, generator=torch.Generator().manual_seed(1))
    assert over_seeds(values, torch.arange(30), seed=3) == over_seeds(values, torch.arange(30), seed=3)
    assert over_seeds(values, torch.arange(30), seed=3) != over_seeds(values, torch.arange(30), seed=4)


@pytest.mark.parametrize(
    "values, images, message",
    [
        (torch.zeros(1, 10), torch.arange(10), r"values must be \[seeds >= 2, pairs >= 2\]"),
        (torch.zeros(10), torch.arange(10), r"values must be \[seeds >= 2, pairs >= 2\]"),
        (torch.zeros(3, 10), torch.arange(9), r"images must be integer ids \[pairs\] = \[10\]"),
        (torch.zeros(3, 10), torch.zeros(10), r"images must be integer ids"),
        (torch.full((3, 10), float("nan")), torch.arange(10), "NaN or inf"),
        (torch.zeros(3, 10), torch.full((10,), 7), "at least 2 distinct"),
    ],
)
def test_bad_input_is_refused(values, images, message):
    with pytest.raises(ValueError, match=message):
        over_seeds(values, images)


def test_evaluation_indices_are_the_pairs_images():
    moving, fixed = evaluation_pairs(7, 7, n=64)
    moving_index, fixed_index = evaluation_indices(7, 7, n=64)
    pool = load_digits(7, "heldout")
    assert torch.equal(pool[moving_index], moving) and torch.equal(pool[fixed_index], fixed)
    assert (moving_index != fixed_index).all()
    assert len(moving_index.unique()) == 64  # every pair has a moving image of its own


def test_over_images_is_the_interval_over_images_alone():
    images = torch.arange(40) // 2
    values = (images % 2).double() + 0.1 * torch.arange(40).double() / 40
    summary = over_images(values, images)
    assert summary.seeds == 1 and summary.estimate == pytest.approx(float(values.mean()))
    assert summary.low < summary.estimate < summary.high
    same = over_seeds(torch.stack([values, values]), images)  # identical rows: no seed-to-seed spread to add
    assert same.estimate == pytest.approx(summary.estimate) and same.high - same.low == pytest.approx(summary.high - summary.low, rel=0.3)
    assert "seeds" not in f"{summary}" and "seeds" in f"{same}"
    with pytest.raises(ValueError, match=r"\[pairs >= 2\]"):
        over_images(torch.stack([values, values]), images)


def test_over_runs_dispatches_on_the_number_of_runs():
    images = torch.arange(30) // 3
    values = torch.rand(3, 30, generator=torch.Generator().manual_seed(4)).double()
    assert over_runs(values, images) == over_seeds(values, images)
    assert over_runs(values[:1], images) == over_images(values[0], images)
    with pytest.raises(ValueError, match=r"\[runs, pairs\]"):
        over_runs(values[0], images)
