"""Losses: similarity, diffusion regularisation, folds, and the loss module of the post.

All per-pair functions take tensors with a leading batch axis B and return shape [B];
the loss module averages them over the batch, which gives icon_registration's numbers:

    similarity_loss     = 2 · mean((A∘φ − B)²)            (the factor 2 is icon's own)
    bending_energy_loss = H² · (mean (Δ_row u)² + mean (Δ_col u)²),  u = id − φ(id)
    all_loss            = λ · bending_energy_loss + similarity_loss
    transform_magnitude = mean((id − φ(id))²)
    flips               = number of grid cells where φ folds (negative Jacobian determinant)

Δ is a forward difference between neighbouring pixels and H the image height.
"""

import math
from typing import NamedTuple

import torch

from .registration import RegistrationModule
from .warping import Transform, as_function


class BendingLoss(NamedTuple):
    """What the loss module returns (icon_registration's field names and order)."""

    all_loss: torch.Tensor
    bending_energy_loss: torch.Tensor
    similarity_loss: torch.Tensor
    transform_magnitude: torch.Tensor
    flips: torch.Tensor


class SSD:
    """Mean squared difference of two images of equal shape (icon's `ssd`)."""

    def __call__(self, image_A: torch.Tensor, image_B: torch.Tensor) -> torch.Tensor:
        return self.per_pair(image_A, image_B).mean()

    def per_pair(self, image_A: torch.Tensor, image_B: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] × [B, C, H, W] -> [B]."""
        if image_A.shape != image_B.shape:
            raise ValueError(f"ssd needs images of equal shape, got {list(image_A.shape)} and {list(image_B.shape)}")
        return (image_A - image_B).pow(2).flatten(1).mean(1)


ssd = SSD()


def similarity_per_pair(similarity, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """A similarity measure evaluated on each pair separately: [B].

    Uses `similarity.per_pair` when the measure has one; otherwise calls it on each pair.
    """
    if hasattr(similarity, "per_pair"):
        return similarity.per_pair(warped, fixed)
    return torch.stack([similarity(warped[i : i + 1], fixed[i : i + 1]) for i in range(len(warped))])


def diffusion_energy(phi_grid: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """H² · (mean squared row difference + mean squared column difference) of u = id − φ: [B]."""
    u = identity - phi_grid
    along_rows = (u[:, :, 1:] - u[:, :, :-1]).pow(2).flatten(1).mean(1)
    along_cols = (u[:, :, :, 1:] - u[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return (along_rows + along_cols) * identity.shape[2] ** 2


def folds(phi_grid: torch.Tensor) -> torch.Tensor:
    """Grid cells [B, 2, H, W] -> [B] whose forward-difference Jacobian determinant is negative.

    Such a cell is turned inside out by φ: the transform is not invertible there.
    """
    phi = phi_grid.detach()
    d_row = phi[:, :, 1:, :-1] - phi[:, :, :-1, :-1]
    d_col = phi[:, :, :-1, 1:] - phi[:, :, :-1, :-1]
    determinant = d_row[:, 0] * d_col[:, 1] - d_row[:, 1] * d_col[:, 0]
    return (determinant < 0).flatten(1).sum(1).to(phi.dtype)


def pair_losses(phi_grid, identity, warped, fixed, similarity, lmbda) -> BendingLoss:
    """Every loss field for each pair ([B] each), from φ on the grid and the warped image."""
    similarity_loss = 2 * similarity_per_pair(similarity, warped, fixed)
    bending_energy_loss = diffusion_energy(phi_grid, identity)
    return BendingLoss(
        all_loss=lmbda * bending_energy_loss + similarity_loss,
        bending_energy_loss=bending_energy_loss,
        similarity_loss=similarity_loss,
        transform_magnitude=(identity - phi_grid).pow(2).flatten(1).mean(1),
        flips=folds(phi_grid),
    )


class Registration(NamedTuple):
    """A registered batch: φ, φ on the identity grid [B, 2, H, W], A ∘ φ [B, C, H, W], and
    every loss field per pair ([B] each)."""

    phi_AB: Transform
    phi_AB_vectorfield: torch.Tensor
    warped_image_A: torch.Tensor
    losses: BendingLoss


class DiffusionRegularizedNet(RegistrationModule):
    """Train a registration network on similarity + λ · diffusion (icon's class of that name).

    `net(moving, fixed)` returns a `BendingLoss` of batch means. As in icon, the last
    forward's results stay readable as `phi_AB`, `phi_AB_vectorfield` and `warped_image_A`;
    `register(moving, fixed)` returns them explicitly instead, with per-pair losses.
    """

    def __init__(self, network: RegistrationModule, similarity, lmbda: float):
        super().__init__()
        if not isinstance(lmbda, (int, float)) or isinstance(lmbda, bool) or not math.isfinite(lmbda) or lmbda < 0:
            raise ValueError(f"lmbda must be a finite number >= 0, got {lmbda!r}")
        self.regis_net = network
        self.similarity = similarity
        self.lmbda = float(lmbda)
        self._last = None

    def evaluate(self, phi: Transform, moving: torch.Tensor, fixed: torch.Tensor) -> Registration:
        """Warp `moving` by the transform φ and score it against `fixed` (inputs not re-checked)."""
        identity = self.identity_map
        phi_grid = phi(identity)
        if len(phi_grid) != len(moving):  # a transform that ignores the batch, e.g. the identity
            phi_grid = phi_grid.expand(len(moving), -1, -1, -1)
        warped = as_function(moving)(phi_grid)
        losses = pair_losses(phi_grid, identity, warped, fixed, self.similarity, self.lmbda)
        return Registration(phi, phi_grid, warped, losses)

    def register(self, moving: torch.Tensor, fixed: torch.Tensor) -> Registration:
        """Register the batch and return φ, φ on the grid, the warped image and per-pair losses."""
        self.check_pair(moving, fixed)
        return self.evaluate(self.regis_net(moving, fixed), moving, fixed)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> BendingLoss:
        self._last = self.register(moving, fixed)
        return BendingLoss(*(field.mean() for field in self._last.losses))

    def _last_result(self) -> Registration:
        if self._last is None:
            raise RuntimeError("no forward pass has run yet: call net(moving, fixed) first, or use net.register(...)")
        return self._last

    @property
    def phi_AB(self) -> Transform:
        return self._last_result().phi_AB

    @property
    def phi_AB_vectorfield(self) -> torch.Tensor:
        return self._last_result().phi_AB_vectorfield

    @property
    def warped_image_A(self) -> torch.Tensor:
        return self._last_result().warped_image_A
