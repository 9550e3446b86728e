"""The second paradigm: a network trained to imitate a per-pair optimiser (Quicksilver-style).

Yang et al.'s *Quicksilver* (2017) first registers every training pair with a classical
optimiser, then trains a network to predict the optimiser's answer from the two images: a
regression onto precomputed transforms, with no image loss at all. Here the same FCNet, in the
same world (9 steps, or 1), learns the fields `helpers.classical.register_pairwise` finds on
pairs of training 5s, with the same λ and SSD the post's network is trained on:

    targets = target_bank(TrainConfig(digit=5, paradigm="supervised"))   # the optimiser's fields
    result = train_supervised(TrainConfig(digit=5, paradigm="supervised"), targets)

The loss is the mean absolute difference between the network's displacement Φ(id) − id (after
all its steps) and the optimiser's, over every number of the field. Quicksilver regresses the
initial momentum of LDDMM with an ℓ1 loss; this collection's transforms are displacement fields,
so the displacement takes the momentum's place and the ℓ1 loss is kept.

The targets are data, the same for every seed: `TARGET_PAIRS` pairs of the training split drawn
with `TARGET_SEED`, each optimised for `TARGET_ITERATIONS` Adam iterations (chapter 01's
setting). The seed of the config sets the network's initial weights and the order of batches.
"""

import math
import sys
import time
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .classical import register_pairwise
from .coordinates import identity_map
from .data import random_pairs
from .train import GUARD_WINDOW, TrainConfig, TrainResult, build_network, is_spike, learning_rate, training_images

TARGET_PAIRS = 4096
TARGET_SEED = 2017
TARGET_ITERATIONS = 500


class TargetBank(NamedTuple):
    """Pairs and the per-pair optimiser's answer for each: moving, fixed [N, 1, H, W],
    displacement [N, 2, H, W] (Φ(id) − id, coordinate units), its outer loss per pair [N], and
    the seconds the optimiser took for all N."""

    moving: torch.Tensor
    fixed: torch.Tensor
    displacement: torch.Tensor
    outer_loss: torch.Tensor
    seconds: float

    @property
    def seconds_per_pair(self) -> float:
        return self.seconds / len(self.moving)


def target_bank(config: TrainConfig, pairs: int = TARGET_PAIRS, iterations: int = TARGET_ITERATIONS,
                progress: bool = False) -> TargetBank:
    """The supervised targets for `config` (its digit, training images and λ): `pairs` random pairs
    registered by the per-pair optimiser. Deterministic on one machine."""
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs must be an int >= 1, got {pairs!r}")
    images = training_images(config)
    moving, fixed = random_pairs(images, pairs, torch.Generator().manual_seed(TARGET_SEED))
    result = register_pairwise(moving, fixed, lmbda=config.lmbda, iterations=iterations, progress=progress)
    registration = result.registration
    displacement = registration.phi_AB_vectorfield - identity_map(moving.shape)
    return TargetBank(moving, fixed, displacement.detach(), registration.losses.all_loss.detach(), result.seconds)


def field_loss(net, moving: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor):
    """(ℓ1 distance of the network's displacement to `target`, the registration) for one batch."""
    registration = net.register(moving, fixed)
    displacement = registration.phi_AB_vectorfield - net.identity_map
    if displacement.shape != target.shape:
        raise ValueError(f"target fields must be {list(displacement.shape)}, got {list(target.shape)}")
    return (displacement - target).abs().mean(), registration


def train_supervised(config: TrainConfig, targets: TargetBank, *, progress: bool = True) -> TrainResult:
    """Train `build_network(config)` to output the per-pair optimiser's fields `targets`.

    Adam on batches of `config.batch_size` pairs drawn from the bank with replacement (seeded by
    `config.seed`), the same learning rate, decay and spike guard as `helpers.train.train`, on
    the CPU through the modules (`net.register`). The history has "field_loss" (the ℓ1 loss),
    the outer loss fields of the same batch for comparison ("all_loss", "similarity_loss",
    "bending_energy_loss", not trained on), "grad_norm" and "skipped".
    """
    if config.paradigm != "supervised":
        raise ValueError(f"train_supervised needs a config with paradigm='supervised', got {config.paradigm!r}")
    if not isinstance(targets, TargetBank) or len(targets.moving) < 2:
        raise ValueError("targets must be a TargetBank of at least 2 pairs (from target_bank)")
    net = build_network(config)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    batches = torch.Generator().manual_seed(config.seed)
    fields = ["field_loss", "all_loss", "similarity_loss", "bending_energy_loss", "grad_norm", "skipped"]
    history = torch.zeros(len(fields), config.steps, dtype=torch.float64)
    print("train_supervised: the ℓ1 loss to the per-pair optimiser's fields, through the modules", file=sys.stderr)
    bar = tqdm(range(config.steps), desc=f"imitating the optimiser on {config.digit}s", disable=not progress, mininterval=0.5)
    for step in bar:
        index = torch.randint(len(targets.moving), (config.batch_size,), generator=batches)
        loss, registration = field_loss(net, targets.moving[index], targets.fixed[index], targets.displacement[index])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"supervised training diverged at step {step}: the loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            net.parameters(), config.grad_clip if config.grad_clip is not None else math.inf)
        norm = float(grad_norm)
        recent = history[-2, max(0, step - GUARD_WINDOW): step]
        skip = config.spike_guard is not None and (not math.isfinite(norm) or is_spike(norm, recent, config.spike_guard))
        if not skip:
            optimizer.param_groups[0]["lr"] = learning_rate(config, step)
            optimizer.step()
        outer = registration.losses
        history[:, step] = torch.tensor([loss.item(), outer.all_loss.mean().item(), outer.similarity_loss.mean().item(),
                                         outer.bending_energy_loss.mean().item(), norm, float(skip)], dtype=torch.float64)
        if step % 50 == 0 or step == config.steps - 1:
            bar.set_postfix(l1=f"{history[0, step]:.5f}", refresh=False)
    bar.close()
    net.eval()
    return TrainResult(net, config, dict(zip(fields, history)), "supervised")

