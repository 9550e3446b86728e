"""Analysis probes: looking inside a multi-step registration, one step at a time."""

import contextlib
from typing import NamedTuple

import torch

from . import warping
from .losses import BendingLoss, DiffusionRegularizedNet


class StepTrace(NamedTuple):
    """A batch of B pairs registered by K steps, seen after each step k = 0..K.

    Step 0 is before any registration (φ = identity); step K is the network's output.

    warped:       [K+1, B, C, H, W]  the moving image warped by the composition of steps 1..k
    displacement: [K+1, B, 2, H, W]  what step k's network added (zeros for k = 0), in
                                     coordinate units, in the frame of the image it saw
    phi:          [K+1, B, 2, H, W]  the composed transform after k steps, on the identity grid
    losses:       BendingLoss of [K+1, B] tensors: every loss field after each step
                  (similarity_loss = 2·mean squared difference to the fixed image, as in the
                  loss; flips = folded grid cells)
    """

    warped: torch.Tensor
    displacement: torch.Tensor
    phi: torch.Tensor
    losses: BendingLoss

    @property
    def similarity(self) -> torch.Tensor:
        return self.losses.similarity_loss

    @property
    def flips(self) -> torch.Tensor:
        return self.losses.flips


def trace_steps(net: DiffusionRegularizedNet, moving: torch.Tensor, fixed: torch.Tensor) -> StepTrace:
    """Register `moving` to `fixed` ([B, C, H, W] each) with `net`, recording every step.

    It iterates `net.regis_net.steps`, the very generator `net`'s forward pass uses, and
    scores each step with `net.evaluate`, the function that computes the loss; so the last
    step reproduces `net.register(moving, fixed)`. Gradients flow unless the caller wraps
    the call in `torch.no_grad()`.
    """
    net.check_pair(moving, fixed)
    results = [net.evaluate(lambda coordinates: coordinates, moving, fixed)]
    displacements = [torch.zeros_like(results[0].phi_AB_vectorfield)]
    for step in net.regis_net.steps(moving, fixed):
        results.append(net.evaluate(step.transform, moving, fixed))
        displacements.append(step.displacement)
    return StepTrace(
        warped=torch.stack([r.warped_image_A for r in results]),
        displacement=torch.stack(displacements),
        phi=torch.stack([r.phi_AB_vectorfield for r in results]),
        losses=BendingLoss(*(torch.stack(field) for field in zip(*(r.losses for r in results)))),
    )


@contextlib.contextmanager
def count_calls(module: torch.nn.Module):
    """Count forward calls of `module` inside the block: `with count_calls(m) as calls: ...; calls[0]`."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def count_interpolations():
    """Count interpolations inside the block: each image warp counts one, each evaluation of
    a transform counts one per displacement field it chains. Yields a one-element list."""
    calls = [0]
    interpolate, evaluate_chain = warping.interpolate, warping.DisplacementChain.__call__

    def counting_interpolate(values, coordinates):
        calls[0] += 1
        return interpolate(values, coordinates)

    def counting_chain(chain, coordinates):
        calls[0] += len(chain.displacements)
        return evaluate_chain(chain, coordinates)

    warping.interpolate, warping.DisplacementChain.__call__ = counting_interpolate, counting_chain
    try:
        yield calls
    finally:
        warping.interpolate, warping.DisplacementChain.__call__ = interpolate, evaluate_chain


class Drift(NamedTuple):
    """How the warped images of a trace drift toward one digit, by a classifier's judgement.

    probability:  [K+1, B]  P(digit) of each step's warped image
    classified:   [K+1, B]  whether the classifier's top class is `digit` at that step
    became:       [B]       classified as `digit` at some step k >= 1, though not at step 0
    first_step:   [B]       the first such step (-1 where it never happens)
    then_left:    [B]       became `digit`, and is no longer classified as it at the last step
    """

    probability: torch.Tensor
    classified: torch.Tensor
    became: torch.Tensor
    first_step: torch.Tensor
    then_left: torch.Tensor


def drift_toward(probabilities: torch.Tensor, digit: int) -> Drift:
    """Summarise class probabilities [K+1, B, 10] of every step's warped image (e.g. from
    `helpers.classifier.predict_proba(model, trace.warped)`) with respect to `digit`."""
    if probabilities.dim() != 3 or probabilities.shape[-1] != 10:
        raise ValueError(f"expected probabilities [K+1, B, 10], got {list(probabilities.shape)}")
    classified = probabilities.argmax(-1) == digit
    later = classified[1:]
    became = later.any(0) & ~classified[0]
    steps = torch.arange(1, classified.shape[0]).unsqueeze(1).expand_as(later)
    first_step = torch.where(later, steps, classified.shape[0]).amin(0)
    first_step = torch.where(became, first_step, torch.full_like(first_step, -1))
    return Drift(probabilities[..., digit], classified, became, first_step, became & ~classified[-1])
