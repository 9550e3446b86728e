"""Warping and composition: images and transforms as functions of coordinates.

A *transform* is a Python function from a coordinate grid [B or 1, 2, H, W] to a grid
of the same shape (see `helpers.coordinates` for the convention). An image becomes
a function of coordinates through bilinear interpolation; warping image I by φ is
then simply I ∘ φ, i.e. `as_function(I)(phi(grid))`.
"""

from typing import Callable

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]


def interpolate(values: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """Sample `values` [B, C, H, W] at `coordinates` [B or 1, 2, H', W'] -> [B, C, H', W'].

    Bilinear, `align_corners=True`, border padding (points outside [0, 1] take the
    nearest edge value): the interpolation icon_registration uses for images and
    displacement fields alike. A batch of 1 on either side is broadcast to the other.
    """
    if values.dim() != 4 or coordinates.dim() != 4 or coordinates.shape[1] != 2:
        raise ValueError(
            "interpolate expects values [B, C, H, W] and coordinates [B, 2, H', W'], "
            f"got {list(values.shape)} and {list(coordinates.shape)}"
        )
    batch_v, batch_c = values.shape[0], coordinates.shape[0]
    if batch_v != batch_c and 1 not in (batch_v, batch_c):
        raise ValueError(f"batch sizes differ: values {batch_v}, coordinates {batch_c}")
    batch = max(batch_v, batch_c)
    # grid_sample wants (x = column, y = row) in [-1, 1], channels last.
    grid = torch.stack((coordinates[:, 1], coordinates[:, 0]), dim=-1) * 2.0 - 1.0
    return F.grid_sample(
        values.expand(batch, -1, -1, -1),
        grid.expand(batch, -1, -1, -1),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )


def as_function(image: torch.Tensor) -> Transform:
    """The image [B, C, H, W] as a function of coordinates: x ↦ image(x)."""
    return lambda coordinates: interpolate(image, coordinates)


def displacement_transform(displacement: torch.Tensor) -> Transform:
    """φ(x) = x + D(x), with the displacement field D [B, 2, H, W] interpolated at x."""
    return lambda coordinates: coordinates + interpolate(displacement, coordinates)


def compose(phi: Transform, psi: Transform) -> Transform:
    """φ ∘ ψ: x ↦ φ(ψ(x)). Warping by φ ∘ ψ applies ψ's motion to the image already moved by φ."""
    return lambda coordinates: phi(psi(coordinates))
