"""Looking inside the weights (chapter 08), each probe with the control it needs.

Interpretability probes can score well on networks that learned nothing: a random projection of
the input already carries much of what a linear probe asks for. So every probe here is meant to
be run on the trained network *and* on `shuffled_copy` (the same weights, each layer's entries
permuted at random: same sizes and scale, no learned structure) or an untrained network.

* `hidden_units`: the 50 units the FCNet's last layer reads, for each step of a trace;
* `linear_probe`: held-out R² of a ridge regression from those units to a target (the residual
  fixed − warped, the step index, P(5)), cross-fitted over distinct images;
* `jacobian_asymmetry`: how far one step's map, current displacement ↦ next step's field, is
  from the gradient of an energy (whose Jacobian, a Hessian, is symmetric);
* `energy_fit`: which combination of candidate energies' descent directions best explains the
  steps, and how much of them it explains.
"""

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .analysis import Objective, StepTrace, descent_direction
from .losses import DiffusionRegularizedNet
from .models import FCNet, inner_fcnet


def shuffled_copy(net: DiffusionRegularizedNet, seed: int = 0) -> DiffusionRegularizedNet:
    """A deep copy of `net` whose FCNet has every weight and bias tensor's entries permuted at
    random (seeded): each layer keeps its values, and so its scale, but loses their arrangement."""
    copied = copy.deepcopy(net)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in inner_fcnet(copied).parameters():
            flat = parameter.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
    return copied


def hidden_units(fcnet: FCNet, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """The activity of the second hidden layer (after its ReLU) for each pair: [B, 50]."""
    if not isinstance(fcnet, FCNet):
        raise ValueError(f"hidden_units needs an FCNet, got {type(fcnet).__name__}")
    x = torch.cat([moving, fixed], 1).reshape(len(moving), -1)
    with torch.no_grad():
        return F.relu(fcnet.dense2(F.relu(fcnet.dense1(x))))


def trace_hidden_units(net: DiffusionRegularizedNet, trace: StepTrace, fixed: torch.Tensor) -> torch.Tensor:
    """`hidden_units` at every step k = 1..K of `trace`, which saw trace.warped[k − 1]: [K, B, 50]."""
    fcnet = inner_fcnet(net)
    return torch.stack([hidden_units(fcnet, trace.warped[k], fixed) for k in range(len(trace.warped) - 1)])


def linear_probe(features: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor,
                 ridge: float = 1e-2, seed: int = 0, min_varying: float = 0.01) -> float:
    """Held-out R² of a ridge regression from `features` [N, F] to `targets` [N] or [N, T].

    The distinct values of `groups` [N] (e.g. the moving image of each row) are split at random
    (seeded) into two halves; the probe is fitted on one half and scored on the other, both ways
    (features standardised with the fitting half's statistics, targets centred on its means).
    A feature that differs from its median on fewer than `min_varying` of the fitting rows (a
    hidden unit that fires on a handful of them) is left out of that fit: standardised by its tiny
    spread there, it would explode on the held-out rows where it fires. R² = 1 − residual sum of
    squares / total sum of squares over both held-out halves: 1 is a perfect read-out, 0 no better
    than the mean, below 0 worse.
    """
    features, targets = features.double(), targets.double()
    targets = targets.unsqueeze(1) if targets.dim() == 1 else targets
    if features.dim() != 2 or targets.dim() != 2 or len(features) != len(targets) or groups.shape != (len(features),):
        raise ValueError(f"expected features [N, F], targets [N] or [N, T], groups [N]; got "
                         f"{list(features.shape)}, {list(targets.shape)}, {list(groups.shape)}")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge!r}")
    if not 0 <= min_varying < 1:
        raise ValueError(f"min_varying must be a share in [0, 1), got {min_varying!r}")
    distinct, cluster = torch.unique(groups, return_inverse=True)
    if len(distinct) < 4:
        raise ValueError(f"need at least 4 distinct groups to hold half of them out, got {len(distinct)}")
    half = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)) < len(distinct) // 2
    in_first = half[cluster]
    residual = total = 0.0
    for fit in (in_first, ~in_first):
        x, y = features[fit], targets[fit]
        varying = (x != x.median(0).values).double().mean(0)
        kept = (varying >= min_varying) & (varying > 0)
        x = x[:, kept]
        mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
        x = (x - mean) / std
        weights = torch.linalg.solve(x.T @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype), x.T @ (y - y.mean(0)))
        held_x, held_y = (features[~fit][:, kept] - mean) / std, targets[~fit]
        residual += float((held_y - y.mean(0) - held_x @ weights).pow(2).sum())
        total += float((held_y - y.mean(0)).pow(2).sum())
    return 1.0 - residual / total


def step_field(net: DiffusionRegularizedNet, moving: torch.Tensor, fixed: torch.Tensor, phi_grid: torch.Tensor,
               offset: torch.Tensor) -> torch.Tensor:
    """The field the inner network outputs when the current transform on the grid is
    `phi_grid` + `offset` ([B, 2, H, W] each; `moving` and `fixed` [B, 1, H, W])."""
    warped = net.as_function(moving)(phi_grid + offset)
    return inner_fcnet(net)(warped, fixed)


def descent_step(net: DiffusionRegularizedNet, moving: torch.Tensor, fixed: torch.Tensor, phi_grid: torch.Tensor,
                 offset: torch.Tensor) -> torch.Tensor:
    """The positive control of `jacobian_asymmetry`: −∇ of the outer loss with respect to the
    transform's grid values at `phi_grid` + `offset`, a gradient step (per pair)."""
    grid = (phi_grid + offset).detach().requires_grad_(True)
    with torch.enable_grad():
        loss = net.evaluate(lambda _: grid, moving, fixed).losses.all_loss.sum()
        (gradient,) = torch.autograd.grad(loss, grid)
    return -gradient


def jacobian(step, net, moving: torch.Tensor, fixed: torch.Tensor, phi_grid: torch.Tensor, epsilon: float = 0.01):
    """The Jacobian [B, 2HW, 2HW] of `step(net, moving, fixed, phi_grid, offset)` with respect to
    the offset, at 0, by central differences of `epsilon` pixels along each of the 2·H·W grid values."""
    batch, size = len(moving), phi_grid[0].numel()
    spacing = float(net.spacing[0])
    jacobians = []
    for b in range(batch):
        directions = torch.eye(size, dtype=phi_grid.dtype).reshape(size, *phi_grid.shape[1:]) * (epsilon * spacing)
        offsets = torch.cat([directions, -directions])
        expand = lambda t: t[b : b + 1].expand(2 * size, *t.shape[1:])  # noqa: E731
        with torch.no_grad():
            values = step(net, expand(moving), expand(fixed), expand(phi_grid), offsets).reshape(2 * size, size)
        jacobians.append(((values[:size] - values[size:]) / (2 * epsilon * spacing)).T)  # column i: ∂ step / ∂ offset_i
    return torch.stack(jacobians)


def asymmetry(jacobians: torch.Tensor) -> torch.Tensor:
    """‖J − Jᵀ‖ / ‖J + Jᵀ‖ (Frobenius) per matrix [B]: 0 for a symmetric J (the Jacobian of a
    gradient), about 1 for a matrix of independent random entries, ∞ for an antisymmetric one."""
    transposed = jacobians.transpose(-1, -2)
    return (jacobians - transposed).flatten(1).norm(dim=1) / (jacobians + transposed).flatten(1).norm(dim=1)


class EnergyFit(NamedTuple):
    """The least-squares fit of the steps D_k by the descent directions of candidate energies.

    coefficients: {term: weight} fitted on all pairs (the step is Σ weight · (−∇ term)); with
    `per_step`, {term: (weight at step 1, ..., weight at step K)}
    explained: held-out share of the steps' squared size the fit explains, 1 − ‖D − fit‖² / ‖D‖²
    (cross-fitted over two halves of the distinct moving images, as in `linear_probe`).
    """

    coefficients: dict
    explained: float


def descent_directions(net: DiffusionRegularizedNet, moving: torch.Tensor, fixed: torch.Tensor,
                       terms: dict[str, Objective], basis: torch.Tensor | None = None):
    """For every step k of `net` on the pairs: its field D_k [K, B, 2HW] and each term's −∇L_k(0)
    ([K, B, 2HW] per term, `helpers.analysis.descent_direction`), both projected onto the span
    `basis` [2HW, r] of the fields the network can output when given."""
    if not terms:
        raise ValueError("terms is empty: pass {name: objective}")
    with torch.no_grad():
        steps = list(net.regis_net.steps(moving, fixed))
    transforms = [lambda coordinates: coordinates] + [step.transform for step in steps]
    project = (lambda v: v) if basis is None else (lambda v: (v @ basis) @ basis.T)  # noqa: E731
    fields = torch.stack([project(step.displacement.flatten(1)) for step in steps])
    directions = {name: torch.stack([project(descent_direction(net, transforms[k], moving, fixed, objective).flatten(1))
                                     for k in range(len(steps))]) for name, objective in terms.items()}
    return fields, directions


def energy_fit(fields: torch.Tensor, directions: dict, groups: torch.Tensor, names=None, seed: int = 0,
               per_step: bool = False) -> EnergyFit:
    """Fit `fields` [K, B, N] by a weighted sum of `directions` ({term: [K, B, N]}, only the
    `names` among them when given): one weight per term shared by every step and pair, or with
    `per_step` one weight per term and step (an unrolled optimiser free to choose its own step
    size for each term at each step)."""
    names = list(directions) if names is None else list(names)
    if not names or any(name not in directions for name in names):
        raise ValueError(f"names must be terms of {sorted(directions)}, got {names}")
    design = torch.stack([directions[name].double() for name in names], -1)       # [K, B, N, T]
    target = fields.double()
    if design.shape[:3] != target.shape or groups.shape != target.shape[1:2]:
        raise ValueError(f"fields [K, B, N] and groups [B] must match the directions, got {list(target.shape)}, "
                         f"{list(groups.shape)} and {list(design.shape)}")
    blocks = [slice(k, k + 1) for k in range(len(target))] if per_step else [slice(None)]

    def solve(pairs, block):
        x, y = design[block, pairs].reshape(-1, len(names)), target[block, pairs].reshape(-1)
        scale = x.norm(dim=0).clamp_min(1e-30)
        return torch.linalg.lstsq(x / scale, y.unsqueeze(1)).solution.squeeze(1) / scale

    distinct, cluster = torch.unique(groups, return_inverse=True)
    if len(distinct) < 4:
        raise ValueError(f"need at least 4 distinct groups to hold half of them out, got {len(distinct)}")
    half = (torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)) < len(distinct) // 2)[cluster]
    residual = total = 0.0
    for fit in (half, ~half):
        for block in blocks:
            weights = solve(fit, block)
            held = target[block, ~fit]
            residual += float((held - design[block, ~fit] @ weights).pow(2).sum())
            total += float(held.pow(2).sum())
    everything = torch.ones_like(half)
    weights = torch.stack([solve(everything, block) for block in blocks])           # [1 or K, T]
    coefficients = {name: (tuple(weights[:, t].tolist()) if per_step else float(weights[0, t])) for t, name in enumerate(names)}
    return EnergyFit(coefficients, 1.0 - residual / total)
