"""Three ways to solve registration, run side by side on the same pairs (chapter 07).

* the **per-pair optimiser** (`helpers.classical`): a search for each pair's field, whose
  objective we know because we wrote it;
* **supervised** networks (`helpers.supervised`, Quicksilver-style): trained to imitate the
  optimiser's fields;
* **unsupervised** networks (`helpers.train`, the post's): trained through the loss itself.

A *method* is either a list of trained networks (one per seed of a recipe) or `OPTIMISER`.
`run_method` registers the same pairs with every member and times it; `became` and
`displacement_pixels` turn its traces into per-pair numbers [runs, pairs], and
`helpers.ensembles.over_runs` summarises them (over seeds and images, or over images for the
deterministic optimiser).

    run = run_method([member.net for member in load_ensemble("fives")], moving, fixed)
    share = over_runs(became(run.traces, judge, 5), moving_ids)   # 7s that end as a classified 5
"""

import time
from typing import NamedTuple

import torch

from .analysis import StepTrace, trace_steps
from .classical import pairwise_trace
from .classifier import predict_proba
from .coordinates import identity_map

OPTIMISER = "per-pair optimiser"

# The methods of chapter 07's comparison: label -> the shipped recipe (helpers.train.load_ensemble)
# or OPTIMISER. All use the same data (training 5s), similarity (SSD) and λ = 0.05.
METHODS = {
    "per-pair optimiser": OPTIMISER,
    "supervised, 9 steps": "fives_supervised",
    "supervised, 1 step": "fives_supervised_single_step",
    "unsupervised, 9 steps": "fives",
    "unsupervised, 1 step": "fives_single_step",
}


class MethodRun(NamedTuple):
    """One method on a batch of pairs: a StepTrace per run (per seed; one for the optimiser,
    whose trace has two stages, before and after) and the wall time per pair, averaged over runs."""

    traces: list
    seconds_per_pair: float


def run_method(method, moving: torch.Tensor, fixed: torch.Tensor, **optimiser_settings) -> MethodRun:
    """Register (moving, fixed) [B, 1, H, W] with every network of `method` (a non-empty list),
    or with the per-pair optimiser when `method` is OPTIMISER (`optimiser_settings` go to
    `helpers.classical.register_pairwise`). Networks run without gradients."""
    if isinstance(method, str):
        if method != OPTIMISER:
            raise ValueError(f"method must be a list of networks or {OPTIMISER!r}, got {method!r}")
        trace, seconds = pairwise_trace(moving, fixed, **optimiser_settings)
        return MethodRun([trace], seconds / len(moving))
    if optimiser_settings:
        raise ValueError(f"optimiser settings {sorted(optimiser_settings)} apply only to {OPTIMISER!r}")
    networks = list(method)
    if not networks:
        raise ValueError("method is an empty list: pass one trained network per seed")
    traces, started = [], time.perf_counter()
    with torch.no_grad():
        for net in networks:
            traces.append(trace_steps(net, moving, fixed))
    return MethodRun(traces, (time.perf_counter() - started) / (len(networks) * len(moving)))


def became(traces: list, model: torch.nn.Module, digit: int) -> torch.Tensor:
    """[runs, pairs] 1.0 where the judge `model` calls the result of the last step `digit` and
    did not call the input `digit`; 0.0 otherwise."""
    if not traces or not all(isinstance(trace, StepTrace) for trace in traces):
        raise ValueError("traces must be a non-empty list of StepTrace (one per run)")
    rows = []
    for trace in traces:
        first, last = (predict_proba(model, trace.warped[k]).argmax(-1) == digit for k in (0, -1))
        rows.append((last & ~first).float())
    return torch.stack(rows)


def probability_by_step(traces: list, model: torch.nn.Module, digit: int) -> torch.Tensor:
    """[runs, stages, pairs] the judge's probability of `digit` for every stage of every trace
    (stage 0 is the input). Traces of one method have the same number of stages."""
    if not traces or len({len(trace.warped) for trace in traces}) != 1:
        raise ValueError("traces must be a non-empty list of StepTrace with the same number of stages")
    return torch.stack([predict_proba(model, trace.warped)[..., digit] for trace in traces])


def displacement_pixels(traces: list) -> torch.Tensor:
    """[runs, pairs] the root-mean-square length of the final displacement Φ(id) − id, in pixels."""
    rows = []
    for trace in traces:
        phi = trace.phi[-1]
        pixels = torch.tensor([size - 1 for size in phi.shape[2:]], dtype=phi.dtype).view(1, 2, 1, 1)
        rows.append(((phi - identity_map(phi.shape)) * pixels).pow(2).sum(1).mean((1, 2)).sqrt())
    return torch.stack(rows)
