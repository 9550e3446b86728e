"""The side-by-side machinery of chapter 06, on cases whose answers are known."""

import pytest
import torch

from helpers.analysis import StepTrace, trace_steps
from helpers.coordinates import identity_map
from helpers.data import load_digits
from helpers.losses import BendingLoss
from helpers.models import post_network
from helpers.paradigms import OPTIMISER, became, displacement_pixels, probability_by_step, run_method

from conftest import perturbed_post_network


class BrightnessJudge(torch.nn.Module):
    """Calls an image a 5 when its mean brightness exceeds 0.5, else a 7."""

    def forward(self, images):
        logits = torch.zeros(len(images), 10)
        bright = images.flatten(1).mean(1) > 0.5
        logits[bright, 5] = 10.0
        logits[~bright, 7] = 10.0
        return logits


def fake_trace(brightness: list, shift: float = 0.0) -> StepTrace:
    """A trace whose stage k, pair p is an image of constant brightness[k][p], and whose final
    transform is the identity moved by `shift` (coordinate units) in both directions."""
    stages, pairs = len(brightness), len(brightness[0])
    warped = torch.tensor(brightness).view(stages, pairs, 1, 1, 1).expand(stages, pairs, 1, 4, 4).clone()
    phi = identity_map((pairs, 1, 4, 4)).expand(pairs, -1, -1, -1).unsqueeze(0).repeat(stages, 1, 1, 1, 1)
    phi[-1] += shift
    zeros = torch.zeros(stages, pairs)
    return StepTrace(warped, torch.zeros_like(phi), phi, BendingLoss(*(zeros for _ in BendingLoss._fields)))


def test_became_counts_only_pairs_that_end_as_the_digit_without_starting_as_it():
    judge = BrightnessJudge()
    trace = fake_trace([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    # pair 0 ends a 5 from a 7; pair 1 never is one; pair 2 was one from the start; pair 3 was, then left
    assert became([trace, trace], judge, 5).tolist() == [[1.0, 0.0, 0.0, 0.0]] * 2
    assert probability_by_step([trace], judge, 5).shape == (1, 3, 4)
    with pytest.raises(ValueError, match="non-empty list of StepTrace"):
        became([], judge, 5)


def test_displacement_pixels_measures_the_final_field_in_pixels():
    trace = fake_trace([[0.0, 0.0], [0.0, 0.0]], shift=1 / 3)  # 4 pixels: spacing 1/3, so one pixel each way
    assert displacement_pixels([trace]) == pytest.approx(torch.full((1, 2), 2 ** 0.5))


def test_run_method_runs_every_network_and_the_optimiser_on_the_same_pairs():
    sevens = load_digits(7, "heldout")
    moving, fixed = sevens[:3], sevens[3:6]
    nets = [perturbed_post_network(std=1e-3, seed=seed) for seed in (0, 1)]
    run = run_method(nets, moving, fixed)
    assert len(run.traces) == 2 and run.seconds_per_pair > 0
    with torch.no_grad():
        assert torch.equal(run.traces[1].phi, trace_steps(nets[1], moving, fixed).phi)
    optimiser = run_method(OPTIMISER, moving, fixed, iterations=20)
    assert len(optimiser.traces) == 1 and optimiser.traces[0].warped.shape[0] == 2
    assert (optimiser.traces[0].similarity[1] < optimiser.traces[0].similarity[0]).all()
    with pytest.raises(ValueError, match="apply only to"):
        run_method(nets, moving, fixed, iterations=20)
    with pytest.raises(ValueError, match="empty list"):
        run_method([], moving, fixed)
    with pytest.raises(ValueError, match="list of networks or"):
        run_method("optimizer", moving, fixed)
    assert len(run_method([post_network()], moving, fixed).traces) == 1


def test_show_summaries_draws_each_rows_interval_seeds_and_estimate():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers import plotting
    from helpers.ensembles import SeedSummary

    summaries = {"a": SeedSummary((0.1, 0.3), 0.2, 0.05, 0.35, 10, 20), "b": SeedSummary((0.6,), 0.6, 0.5, 0.7, 10, 20)}
    fig, ax = plt.subplots()
    plotting.show_summaries(ax, summaries, xlabel="share", label="judge")
    assert [label.get_text() for label in ax.get_yticklabels()] == ["a", "b"]
    interval, seeds, estimate = ax.lines[:3]
    assert list(interval.get_xdata()) == [0.05, 0.35] and list(seeds.get_xdata()) == [0.1, 0.3]
    assert list(estimate.get_xdata()) == [0.2] and ax.get_legend_handles_labels()[1] == ["judge"]
    assert list(ax.lines[4].get_ydata()) == [1] and ax.get_xlabel() == "share"
    plt.close(fig)
