"""Warping and composition: images and transforms as functions of coordinates.

A *transform* is a Python function from a coordinate grid [B or 1, 2, H, W] to a grid
of the same shape (see `helpers.coordinates` for the convention). An image becomes
a function of coordinates through bilinear interpolation; warping image I by φ is
then simply I ∘ φ, i.e. `as_function(I)(phi(grid))`.
"""

from typing import Callable

import torch

from . import sampler

Transform = Callable[[torch.Tensor], torch.Tensor]


def _batch(what: str, *batches: int) -> int:
    """The common batch size of tensors whose batches are equal or 1."""
    sizes = set(batches) - {1}
    if len(sizes) > 1:
        raise ValueError(f"{what}: batch sizes {list(batches)} differ (only a batch of 1 is broadcast)")
    return sizes.pop() if sizes else 1


def interpolate(values: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """Sample `values` [B, C, H, W] at `coordinates` [B or 1, 2, H', W'] -> [B, C, H', W'].

    Bilinear, `align_corners=True`, border padding (points outside [0, 1] take the
    nearest edge value): the interpolation icon_registration uses for images and
    displacement fields alike (`helpers.sampler` computes it). A batch of 1 on either
    side is broadcast to the other.
    """
    if values.dim() != 4 or coordinates.dim() != 4 or coordinates.shape[1] != 2:
        raise ValueError(
            "interpolate expects values [B, C, H, W] and coordinates [B, 2, H', W'], "
            f"got {list(values.shape)} and {list(coordinates.shape)}"
        )
    batch = _batch("interpolate", values.shape[0], coordinates.shape[0])
    return sampler.sample(sampler.batched(values, batch), coordinates)


def as_function(image: torch.Tensor) -> Transform:
    """The image [B, C, H, W] as a function of coordinates: x ↦ image(x)."""
    return lambda coordinates: interpolate(image, coordinates)


class DisplacementChain:
    """φ_1 ∘ φ_2 ∘ … ∘ φ_K with φ_k(x) = x + D_k(x): a transform that keeps its displacement
    fields D_k [B, 2, H, W], so that composing two chains is joining their lists and
    evaluating one is a single pass of the sampler over the points (D_K acts first).
    Composed chains share their fields (`sampler.Field`), and with them the copy that the
    compiled sampler makes of each field once.
    """

    def __init__(self, displacements):
        self.fields = tuple(d if isinstance(d, sampler.Field) else sampler.Field(d) for d in displacements)
        self.displacements = tuple(field.values for field in self.fields)
        shapes = {tuple(d.shape[1:]) for d in self.displacements}
        if not self.displacements or any(d.dim() != 4 or d.shape[1] != 2 for d in self.displacements) or len(shapes) != 1:
            raise ValueError(
                "a displacement chain needs one or more fields [B, 2, H, W] of one size, got "
                f"{[list(d.shape) for d in self.displacements]}"
            )

    def __call__(self, coordinates: torch.Tensor) -> torch.Tensor:
        if coordinates.dim() != 4 or coordinates.shape[1] != 2:
            raise ValueError(f"a transform takes coordinates [B, 2, H, W], got {list(coordinates.shape)}")
        _batch("displacement chain", coordinates.shape[0], *(len(d) for d in self.displacements))
        return sampler.chain(self.fields, coordinates)


def displacement_transform(displacement: torch.Tensor) -> Transform:
    """φ(x) = x + D(x), with the displacement field D [B, 2, H, W] interpolated at x."""
    return DisplacementChain((displacement,))


def compose(phi: Transform, psi: Transform) -> Transform:
    """φ ∘ ψ: x ↦ φ(ψ(x)). Warping by φ ∘ ψ applies ψ's motion to the image already moved by φ."""
    if isinstance(phi, DisplacementChain) and isinstance(psi, DisplacementChain):
        return DisplacementChain(phi.fields + psi.fields)
    return lambda coordinates: phi(psi(coordinates))
