"""The traditional approach: optimise a displacement field directly, for each pair.

No network: the field D itself is the parameter, and Adam descends the same loss the
network is trained on (2·SSD + λ·diffusion), through the same modules:

    φ(x) = x + D(x),   D = argmin  2·mean((A∘φ − B)²) + λ·H²·(mean (Δ_row u)² + mean (Δ_col u)²)

A batch of pairs is optimised at once. The objective is the *sum* of the per-pair losses,
so each pair's field receives exactly the gradient it would get alone; and Adam updates
every parameter on its own, so this is the same as optimising each pair separately.
"""

import time
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .analysis import StepTrace
from .coordinates import identity_map
from .losses import BendingLoss, DiffusionRegularizedNet, Registration, pair_losses, ssd
from .registration import FunctionFromVectorField


class FreeField(nn.Module):
    """A 'network' that ignores its inputs and returns its own parameter: a field [B, 2, H, W]."""

    def __init__(self, shape):
        super().__init__()
        self.field = nn.Parameter(torch.zeros(shape))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        if moving.shape[0] != self.field.shape[0]:
            raise ValueError(f"this field was made for {self.field.shape[0]} pairs, got {moving.shape[0]}")
        return self.field


class PairwiseResult(NamedTuple):
    """registration: the final φ, φ on the grid, warped images and per-pair losses;
    history: each loss field (batch mean) per iteration, float64 [iterations];
    seconds: wall time of the optimisation."""

    registration: Registration
    history: dict
    seconds: float


def register_pairwise(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    lmbda: float = 0.05,
    iterations: int = 500,
    lr: float = 1e-3,
    progress: bool = False,
) -> PairwiseResult:
    """Register each pair of `moving`, `fixed` ([B, 1, H, W] each) by Adam on its own field."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    field = FreeField((moving.shape[0], 2, *moving.shape[2:]))
    net = DiffusionRegularizedNet(FunctionFromVectorField(field), ssd, lmbda=lmbda)
    net.assign_identity_map(moving.shape)
    net.check_pair(moving, fixed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    history = torch.zeros(len(BendingLoss._fields), iterations, dtype=torch.float64)
    started = time.perf_counter()
    for iteration in tqdm(range(iterations), desc="optimising fields", disable=not progress):
        losses = net.register(moving, fixed).losses
        optimizer.zero_grad(set_to_none=True)
        losses.all_loss.sum().backward()  # each field gets exactly its own pair's gradient
        optimizer.step()
        history[:, iteration] = torch.stack([value.detach().mean() for value in losses]).double()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        registration = net.register(moving, fixed)
    return PairwiseResult(registration, dict(zip(BendingLoss._fields, history)), seconds)


def pairwise_trace(moving: torch.Tensor, fixed: torch.Tensor, **settings) -> tuple[StepTrace, float]:
    """`register_pairwise` seen as a one-step registration, for side-by-side comparisons with the
    networks' `helpers.analysis.trace_steps`: a StepTrace whose step 0 is the identity and step 1
    the optimiser's result (every field as trace_steps defines it), and the seconds it took."""
    result = register_pairwise(moving, fixed, **settings)
    final = result.registration
    identity = identity_map(moving.shape).expand_as(final.phi_AB_vectorfield)
    start = pair_losses(identity, identity[:1], moving, fixed, ssd, settings.get("lmbda", 0.05))
    trace = StepTrace(
        warped=torch.stack([moving, final.warped_image_A]),
        displacement=torch.stack([torch.zeros_like(identity), final.phi_AB_vectorfield - identity]),
        phi=torch.stack([identity, final.phi_AB_vectorfield]),
        losses=BendingLoss(*(torch.stack([a, b]) for a, b in zip(start, final.losses))),
    )
    return trace, result.seconds
