"""Warping and composition: images and transforms as functions of coordinates.

A *transform* is a Python function from a coordinate grid [B or 1, 2, H, W] to a grid
of the same shape (see `helpers.coordinates` for the convention). An image becomes
a function of coordinates through bilinear interpolation; warping image I by φ is
then simply I ∘ φ, i.e. `as_function(I)(phi(grid))`.

`bilinear` below is that interpolation written out; `interpolate` computes the same numbers
through helpers.engine (grid_sample, or a compiled kernel where it serves): the one place
where the maths hands over to the engine.
"""

from typing import Callable

import torch

from . import engine

Transform = Callable[[torch.Tensor], torch.Tensor]


def bilinear(values: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """values [B, C, H, W] at coordinates [B, 2, H', W'] -> [B, C, H', W'], written out.

    A coordinate c in [0, 1] is the pixel position x = c · (N - 1), clamped to [0, N - 1]
    (border padding). The point lies in the cell whose top-left pixel is (floor(row),
    floor(column)), and its value is the mean of the cell's four corners weighted by the
    point's distance to the opposite side:

        v = (1 - a)(1 - b) v[i, j] + (1 - a) b v[i, j+1] + a (1 - b) v[i+1, j] + a b v[i+1, j+1]

    with a = row - i and b = column - j. (`interpolate` gives the same numbers, faster.)
    """
    batch, channels, height, width = values.shape
    # Pixel units, x = c · (N - 1) [B, H', W'], rounded as grid_sample computes it (from its
    # [-1, 1] convention, g = 2c - 1): a point then lands in the same cell as grid_sample's.
    rows = ((coordinates[:, 0] * 2 - 1) + 1) * ((height - 1) / 2)
    cols = ((coordinates[:, 1] * 2 - 1) + 1) * ((width - 1) / 2)
    rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
    # The cell's top-left pixel; on the last row or column, the cell before it (then a or b is 1).
    i = rows.floor().clamp(max=height - 2).long()
    j = cols.floor().clamp(max=width - 2).long()
    a, b = (rows - i).unsqueeze(1), (cols - j).unsqueeze(1)  # [B, 1, H', W']

    flat = values.reshape(batch, channels, height * width)

    def corner(di, dj):  # values at pixel (i + di, j + dj) of every point: [B, C, H', W']
        index = ((i + di) * width + (j + dj)).reshape(batch, 1, -1).expand(-1, channels, -1)
        return flat.gather(2, index).reshape(batch, channels, *coordinates.shape[2:])

    return (1 - a) * ((1 - b) * corner(0, 0) + b * corner(0, 1)) + a * ((1 - b) * corner(1, 0) + b * corner(1, 1))


def _batch(what: str, *batches: int) -> int:
    """The common batch size of tensors whose batches are equal or 1."""
    sizes = set(batches) - {1}
    if len(sizes) > 1:
        raise ValueError(f"{what}: batch sizes {list(batches)} differ (only a batch of 1 is broadcast)")
    return sizes.pop() if sizes else 1


def interpolate(values: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """Sample `values` [B, C, H, W] at `coordinates` [B or 1, 2, H', W'] -> [B, C, H', W'].

    Bilinear, `align_corners=True`, border padding (points outside [0, 1] take the
    nearest edge value): `bilinear`'s numbers, the interpolation icon_registration uses for
    images and displacement fields alike. A batch of 1 on either side is broadcast to the other.
    """
    if values.dim() != 4 or coordinates.dim() != 4 or coordinates.shape[1] != 2:
        raise ValueError(
            "interpolate expects values [B, C, H, W] and coordinates [B, 2, H', W'], "
            f"got {list(values.shape)} and {list(coordinates.shape)}"
        )
    batch = _batch("interpolate", values.shape[0], coordinates.shape[0])
    return engine.sample(engine.batched(values, batch), coordinates)


def as_function(image: torch.Tensor) -> Transform:
    """The image [B, C, H, W] as a function of coordinates: x ↦ image(x)."""
    return lambda coordinates: interpolate(image, coordinates)


class DisplacementChain:
    """φ_1 ∘ φ_2 ∘ … ∘ φ_K with φ_k(x) = x + D_k(x), for displacement fields D_k [B, 2, H, W]:

        def phi(x):
            for D in reversed(displacements):    # D_K acts first
                x = x + interpolate(D, x)
            return x

    A transform that keeps its fields, so that composing two chains is joining their lists
    (`compose`), and evaluating one is one call of `engine.chain`, which computes that loop
    (in one pass over the points where the compiled kernel serves).
    """

    def __init__(self, displacements):
        self.displacements = tuple(displacements)
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
        return engine.chain(self.displacements, coordinates)


def displacement_transform(displacement: torch.Tensor) -> Transform:
    """φ(x) = x + D(x), with the displacement field D [B, 2, H, W] interpolated at x."""
    return DisplacementChain((displacement,))


def compose(phi: Transform, psi: Transform) -> Transform:
    """φ ∘ ψ: x ↦ φ(ψ(x)). Warping by φ ∘ ψ applies ψ's motion to the image already moved by φ.

    Two chains of displacements compose into the chain of both lists: the same function."""
    if isinstance(phi, DisplacementChain) and isinstance(psi, DisplacementChain):
        return DisplacementChain(phi.displacements + psi.displacements)
    return lambda coordinates: phi(psi(coordinates))
