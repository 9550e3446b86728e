"""Analysis probes: looking inside a multi-step registration, one step at a time."""

import contextlib
from typing import Callable, NamedTuple

import torch

from . import warping
from .classifier import predict_proba
from .data import evaluation_indices, evaluation_pairs
from .losses import BendingLoss, DiffusionRegularizedNet, Registration
from .models import inner_fcnet
from .warping import Transform


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


def ensemble_drift(traces: list, model: torch.nn.Module, digit: int) -> Drift:
    """`drift_toward` for the traces of several networks on the same pairs (one per seed of an
    ensemble), judged by the classifier `model`: every field gains a leading seed axis [S, ...]."""
    if not traces:
        raise ValueError("traces is empty: pass one StepTrace per network")
    drifts = [drift_toward(predict_proba(model, trace.warped), digit) for trace in traces]
    return Drift(*(torch.stack(field) for field in zip(*drifts)))


# --- Memorisation (chapters 03 and 04) -----------------------------------------------------


def nearest_distance(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """[N] float64: the mean squared pixel difference from each image [N, 1, H, W] to the closest of
    `references` [R, 1, H, W] (what `NearestImageSSD` computes, without the registration)."""
    if images.dim() != 4 or references.dim() != 4 or images.shape[1:] != references.shape[1:] or len(references) == 0:
        raise ValueError(f"need images [N, C, H, W] and references [R >= 1, C, H, W] of one size, got "
                         f"{list(images.shape)} and {list(references.shape)}")
    flat, refs = images.flatten(1).double(), references.flatten(1).double()
    norms = (refs * refs).sum(1)
    chunks = [((chunk * chunk).sum(1, keepdim=True) - 2 * chunk @ refs.T + norms).amin(1) for chunk in flat.split(1024)]
    return torch.cat(chunks).clamp_min(0) / flat.shape[1]


def memorisation_gap(images: torch.Tensor, seen: torch.Tensor, unseen: torch.Tensor, draws: int = 10,
                     seed: int = 0) -> torch.Tensor:
    """[N] float64: how much nearer each image is to images a network trained on (`seen`) than to
    as many images it never saw (`unseen`): the distance to the nearest unseen image minus the
    distance to the nearest of len(unseen) seen ones (drawn at random without replacement,
    averaged over `draws` draws when `seen` is larger). Positive: nearer the training images, as
    a network that had memorised them would make its outputs; about 0 for images that are merely
    of the same kind."""
    if len(seen) < len(unseen):
        raise ValueError(f"need at least as many seen images as unseen ones, got {len(seen)} and {len(unseen)}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be an int >= 1, got {draws!r}")
    to_unseen = nearest_distance(images, unseen)
    if len(seen) == len(unseen):
        return to_unseen - nearest_distance(images, seen)
    generator = torch.Generator().manual_seed(seed)
    to_seen = torch.stack([nearest_distance(images, seen[torch.randperm(len(seen), generator=generator)[: len(unseen)]])
                           for _ in range(draws)]).mean(0)
    return to_unseen - to_seen


# --- Hunting the inner objective (chapters 05 and 06) ---------------------------------------
#
# A candidate objective is a function of a registration (φ, its grid, the warped image, every
# loss field; see `helpers.losses.Registration`) returning one value per pair, lower = better.

Objective = Callable[[Registration], torch.Tensor]


def outer_loss(registration: Registration) -> torch.Tensor:
    """The training loss per pair: 2·SSD(A ∘ φ, B) + λ·diffusion(φ) ([B])."""
    return registration.losses.all_loss


def fixed_similarity(registration: Registration) -> torch.Tensor:
    """The similarity term alone, 2·SSD(A ∘ φ, B), without the regulariser ([B])."""
    return registration.losses.similarity_loss


class NearestImageSSD:
    """SSD of the warped image to the closest of a set of reference images: min_r mean((A∘φ − r)²).

    references: [R, 1, H, W], e.g. every training 5, to ask "is the warped image becoming a
    training 5?". (The gradient is that of the SSD to the current nearest reference.)
    """

    def __init__(self, references: torch.Tensor):
        if not isinstance(references, torch.Tensor) or references.dim() != 4 or len(references) == 0:
            shape = list(references.shape) if isinstance(references, torch.Tensor) else type(references).__name__
            raise ValueError(f"references must be a non-empty tensor [R, C, H, W], got {shape}")
        self.references = references.flatten(1)

    def __call__(self, registration: Registration) -> torch.Tensor:
        warped = registration.warped_image_A.flatten(1)
        if warped.shape[1] != self.references.shape[1]:
            raise ValueError(f"warped images have {warped.shape[1]} values each, references {self.references.shape[1]}")
        squared = (warped.pow(2).sum(1, keepdim=True) - 2 * warped @ self.references.T
                   + self.references.pow(2).sum(1))
        return squared.amin(1) / warped.shape[1]


class ClassifierSurprise:
    """−log P(digit | A ∘ φ) under a frozen classifier: low when the warped image looks like `digit`."""

    def __init__(self, model: torch.nn.Module, digit: int):
        if isinstance(digit, bool) or not isinstance(digit, int) or not 0 <= digit <= 9:
            raise ValueError(f"digit must be an int in 0..9, got {digit!r}")
        self.model, self.digit = model, digit

    def __call__(self, registration: Registration) -> torch.Tensor:
        logits = self.model(registration.warped_image_A)
        return -logits.log_softmax(-1)[:, self.digit]


class StepAlignment(NamedTuple):
    """How K steps of a registration relate to one candidate objective L, per step and pair.

    before, after: [K, B]  L after steps 1..k−1 and after steps 1..k
    cosine:        [K, B]  cos(D_k, −∇L_k(0)) over all 2·H·W numbers of the field, NaN where
                           D_k or the gradient is exactly zero (no direction to compare)
    range_cosine:  [K, B]  cos(D_k, −P∇L_k(0)), P the orthogonal projection onto the fields the
                           network can output at all (`output_basis`); NaN without a basis
    """

    before: torch.Tensor
    after: torch.Tensor
    cosine: torch.Tensor
    range_cosine: torch.Tensor

    @property
    def lowered(self) -> torch.Tensor:
        """[K, B] whether step k lowered L (strictly)."""
        return self.after < self.before


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between a and b [B, ...], flattened per pair: [B]; NaN where either is zero."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, (a * b).sum(1) / norms, torch.full_like(norms, float("nan"))).float()


def output_basis(net: DiffusionRegularizedNet) -> torch.Tensor:
    """An orthonormal basis [2·H·W, r] of the span of the fields the inner FCNet can output.

    Its last layer maps 50 hidden units to the field, D = W h + b, so every D it outputs lies in
    the span of W's 50 columns and b (r ≤ 51 of the 2·H·W = 1568 dimensions). Columns of zero
    (an untrained network) give r = 0 basis vectors.
    """
    last = inner_fcnet(net).dense3
    spanning = torch.cat([last.weight.detach(), last.bias.detach().unsqueeze(1)], 1).double()
    u, singular, _ = torch.linalg.svd(spanning, full_matrices=False)
    keep = singular > 1e-8 * max(1.0, float(singular.max()))
    return u[:, keep].float()


def descent_direction(
    net: DiffusionRegularizedNet, before: Transform, moving: torch.Tensor, fixed: torch.Tensor,
    objective: Objective, offset: float = 0.01,
) -> torch.Tensor:
    """−∇L_k(0): the direction in which an optimiser of L would move the next step's field.

    L_k(E) = objective(net.evaluate(Φ ∘ (id + E), moving, fixed)), with Φ = `before` (the
    transform of the steps so far) and E [B, 2, H, W] a displacement field composed exactly as
    the network's own next step is. Bilinear interpolation has kinks at grid points, where
    E = 0 sits, so the one-sided derivative autograd returns there (a forward difference) is
    replaced by the symmetric one: the mean of ∇L_k at the two offsets E = ±(ε, ε), ε = `offset`
    pixels, i.e. of the forward and the backward difference, a central difference.
    Returns [B, 2, H, W] (the objective is per pair, so each pair's gradient is its own).
    """
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not 0 < offset < 1:
        raise ValueError(f"offset must be a number of pixels in (0, 1), got {offset!r}")
    spacing = net.spacing.to(moving.dtype).view(1, 2, 1, 1)
    total = torch.zeros(moving.shape[0], 2, *moving.shape[2:], dtype=moving.dtype)
    for signs in ((1, 1), (-1, -1)):
        shift = torch.tensor(signs, dtype=moving.dtype).view(1, 2, 1, 1) * offset * spacing
        field = shift.expand_as(total).clone().requires_grad_(True)
        with torch.enable_grad():
            value = objective(net.evaluate(warping.compose(before, warping.displacement_transform(field)), moving, fixed))
            (gradient,) = torch.autograd.grad(value.sum(), field)
        total += gradient
    return -total / 2


def step_alignment(
    net: DiffusionRegularizedNet, moving: torch.Tensor, fixed: torch.Tensor,
    objectives: dict[str, Objective], offset: float = 0.01, basis: torch.Tensor | None = None,
) -> dict[str, StepAlignment]:
    """For each candidate objective L, does each step of `net` lower L, and does it point downhill?

    Runs `net` on the pairs (moving, fixed [B, C, H, W]) and, for every step k with field D_k,
    compares D_k with −∇L_k(0) (see `descent_direction`) and L before and after the step. A step
    that is a small gradient step on L has cosine 1; an optimiser of L has cosines > 0 and
    lowers L. With `basis` [2·H·W, r] (from `output_basis`), also compares D_k with the part of
    −∇L_k(0) the network could have output. Returns {name: StepAlignment}. The network runs
    without gradients.
    """
    net.check_pair(moving, fixed)
    if not objectives:
        raise ValueError("objectives is empty: pass {name: objective} with at least one candidate")
    with torch.no_grad():
        steps = list(net.regis_net.steps(moving, fixed))
    identity: Transform = lambda coordinates: coordinates  # noqa: E731
    transforms = [identity] + [step.transform for step in steps]
    results = {}
    for name, objective in objectives.items():
        before, after, cosines, range_cosines = [], [], [], []
        with torch.no_grad():
            values = [objective(net.evaluate(phi, moving, fixed)) for phi in transforms]
        for k, step in enumerate(steps):
            downhill = descent_direction(net, transforms[k], moving, fixed, objective, offset)
            cosines.append(cosine(step.displacement, downhill))
            if basis is None:
                range_cosines.append(torch.full_like(cosines[-1], float("nan")))
            else:
                flat = downhill.flatten(1)
                range_cosines.append(cosine(step.displacement, (flat @ basis) @ basis.T))
            before.append(values[k])
            after.append(values[k + 1])
        results[name] = StepAlignment(*map(torch.stack, (before, after, cosines, range_cosines)))
    return results


class Interval(NamedTuple):
    """A statistic with a percentile bootstrap interval: estimate, low, high."""

    estimate: float
    low: float
    high: float

    def __format__(self, spec: str) -> str:
        """'0.12 [0.10, 0.14]'; the format spec applies to each number (default '.2f')."""
        spec = spec or ".2f"
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def __str__(self) -> str:
        return format(self)


def bootstrap_interval(
    values: torch.Tensor, statistic: Callable[[torch.Tensor], torch.Tensor] = torch.mean,
    level: float = 0.95, resamples: int = 2000, seed: int = 0,
) -> Interval:
    """Percentile bootstrap over the first axis of `values` (one entry per pair, [n] or [n, ...]).

    Draws `resamples` samples of n pairs with replacement (seeded), computes `statistic` on each
    (it must reduce over axis 0 to a scalar), and returns the statistic on all pairs with the
    (1 − level)/2 and (1 + level)/2 quantiles of the resampled statistics.
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() == 0 or len(values) < 2:
        raise ValueError(f"need values with at least 2 pairs along axis 0, got shape {list(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError("values contain NaN or inf; drop or fill them before bootstrapping")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples must be an int >= 100, got {resamples!r}")
    estimate = torch.as_tensor(statistic(values))
    if estimate.dim() != 0:
        raise ValueError(f"statistic must reduce the values to a scalar, got shape {list(estimate.shape)}")
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(values), (resamples, len(values)), generator=generator)
    statistics = torch.stack([torch.as_tensor(statistic(values[index]), dtype=torch.float64) for index in draws])
    low, high = torch.quantile(statistics, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return Interval(float(estimate), float(low), float(high))


class DigitTransfer(NamedTuple):
    """Networks trained on digits t (rows) registering pairs of digits e (columns), e → e.

    train_digits, eval_digits: the row and column labels
    similarity_ratio: [T, E, B]      similarity loss after the last step / before the first
    folds:            [T, E, B]      folded cells after the last step
    probability:      [T, E, K+1, B, 10]  classifier probabilities of the warped moving image
                                     after each step k = 0..K (k = 0: the input itself)
    """

    train_digits: list
    eval_digits: list
    similarity_ratio: torch.Tensor
    folds: torch.Tensor
    probability: torch.Tensor

    def drift(self, digit: int) -> torch.Tensor:
        """[T, E, B]: change of P(digit) from the input to the last step, per pair."""
        return self.probability[:, :, -1, :, digit] - self.probability[:, :, 0, :, digit]


def digit_transfer(
    nets: dict, classify: Callable[[torch.Tensor], torch.Tensor], eval_digits=range(10), n: int = 256, seed: int = 1234,
) -> DigitTransfer:
    """Run every network of `nets` ({training digit: DiffusionRegularizedNet}) on `n` held-out
    pairs e → e of every digit e in `eval_digits` (`helpers.data.evaluation_pairs(e, e, n, seed)`,
    the same pairs for every network), and score the warped moving image after every step with
    `classify` (images [N, 1, H, W] -> probabilities [N, 10], e.g. `partial(predict_proba,
    model)`). The networks must all take the same number of steps. (`ensemble_transfer` does
    the same for several seeds of each network and several judges.)"""
    if not nets:
        raise ValueError("nets is empty: pass {training digit: network}")
    result = ensemble_transfer({digit: [net] for digit, net in nets.items()}, {"judge": classify}, eval_digits, n, seed)
    return DigitTransfer(result.train_digits, result.eval_digits, result.similarity_ratio[0], result.folds[0],
                         result.probability["judge"][0])


class EnsembleTransfer(NamedTuple):
    """`DigitTransfer` for ensembles and several judges: a leading seed axis S on every tensor.

    similarity_ratio, folds: [S, T, E, B]
    probability: {judge name: [S, T, E, K+1, B, 10]}
    moving_index: [E, B]  which held-out image of digit e is pair b's moving image (an index
                          into that digit's images: ids of different digits coincide)
    """

    train_digits: list
    eval_digits: list
    similarity_ratio: torch.Tensor
    folds: torch.Tensor
    probability: dict
    moving_index: torch.Tensor

    def drift(self, judge: str, digit: int) -> torch.Tensor:
        """[S, T, E, B]: change of P(digit) under `judge` from the input to the last step, per pair."""
        probability = self.probability[judge]
        return probability[:, :, :, -1, :, digit] - probability[:, :, :, 0, :, digit]


def ensemble_transfer(
    ensembles: dict, judges: dict, eval_digits=range(10), n: int = 256, seed: int = 1234,
) -> EnsembleTransfer:
    """Like `digit_transfer`, for `ensembles` ({training digit: [network of each seed]}, the same
    number of seeds for every digit) and `judges` ({name: classify function}): every network
    registers the same pairs, and every judge scores every step of every registration."""
    if not ensembles or not judges:
        raise ValueError("pass at least one ensemble ({training digit: [networks]}) and one judge ({name: classify})")
    seeds = {len(nets) for nets in ensembles.values()}
    if len(seeds) != 1 or 0 in seeds:
        raise ValueError(f"every ensemble needs the same, non-zero number of networks, got {sorted(seeds)}")
    eval_digits = list(eval_digits)
    if not eval_digits or len(set(eval_digits)) != len(eval_digits):
        raise ValueError(f"eval_digits must name at least one digit, none twice, got {eval_digits}")
    ratios, folds, probabilities = [], [], {name: [] for name in judges}
    for position in range(seeds.pop()):
        for nets in ensembles.values():
            for digit in eval_digits:
                moving, fixed = evaluation_pairs(digit, digit, n, seed)
                with torch.no_grad():
                    trace = trace_steps(nets[position], moving, fixed)
                ratios.append(trace.similarity[-1] / trace.similarity[0])
                folds.append(trace.flips[-1])
                for name, classify in judges.items():
                    probabilities[name].append(classify(trace.warped.flatten(0, 1)).reshape(*trace.warped.shape[:2], -1))
    steps = {len(p) for p in probabilities[next(iter(judges))]}
    if len(steps) != 1:
        raise ValueError(f"the networks take different numbers of steps ({sorted(s - 1 for s in steps)}); pass networks of one kind")
    shape = (-1, len(ensembles), len(eval_digits))
    moving_index = torch.stack([evaluation_indices(digit, digit, n, seed)[0] for digit in eval_digits])
    return EnsembleTransfer(
        list(ensembles), eval_digits, torch.stack(ratios).reshape(*shape, n), torch.stack(folds).reshape(*shape, n),
        {name: torch.stack(values).reshape(*shape, *steps, n, 10) for name, values in probabilities.items()},
        moving_index,
    )
