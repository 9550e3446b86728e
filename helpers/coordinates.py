"""Coordinates and grids, and the checks every public entry point makes on its images.

Convention (icon_registration's): a 2-D image of H×W pixels lives on the unit square.
Pixel (i, j) sits at the coordinate (i / (H-1), j / (W-1)), so coordinates lie in
[0, 1] inclusive and channel 0 is the row. A *grid* of coordinates is a tensor of shape
[B or 1, 2, H, W]; the identity map is the grid whose value at pixel (i, j) is that
pixel's own coordinate.
"""

import math

import torch


def identity_map(shape) -> torch.Tensor:
    """The identity grid for images of `shape` = [B, C, H, W] (or [H, W]): float32 [1, 2, H, W].

    Its spacing is 1 / (N - 1) along each axis, as in icon_registration.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 4):
        raise ValueError(f"expected an image shape [B, C, H, W] or [H, W], got {list(shape)}")
    height, width = shape[-2:]
    if height < 2 or width < 2:
        raise ValueError(f"images need at least 2×2 pixels to define a grid, got {height}×{width}")
    rows = torch.arange(height, dtype=torch.float64) * (1.0 / (height - 1))
    cols = torch.arange(width, dtype=torch.float64) * (1.0 / (width - 1))
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
    return grid.to(torch.float32).unsqueeze(0)


def check_images(name: str, images, expected_shape=None) -> None:
    """Raise ValueError unless `images` is a finite floating tensor [B, C, H, W].

    `expected_shape` is (C, H, W): when given, the images must have exactly those
    channels and that size.
    """
    expected = "[B, C, H, W]" if expected_shape is None else "[B, {}, {}, {}]".format(*expected_shape)
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"{name} must have rank 4, shape {expected}; got rank {images.dim()}, shape {list(images.shape)}"
            + (" (add a channel axis with .unsqueeze(1)?)" if images.dim() == 3 else "")
        )
    if not images.is_floating_point():
        raise ValueError(
            f"{name} has integer dtype {images.dtype}; expected floating point intensities "
            "(e.g. uint8 pixels / 255.0)"
        )
    if expected_shape is not None and tuple(images.shape[1:]) != tuple(expected_shape):
        raise ValueError(
            f"{name} has shape {list(images.shape)}, expected {expected} "
            "(the shape given to assign_identity_map)"
        )
    if not all_finite(images):
        raise ValueError(f"{name} contains NaN or inf values; expected finite intensities")


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite (no NaN, no ±inf).

    The smallest and largest elements are finite exactly when all are (NaN propagates
    through both), and one min-max pass is several times cheaper than `isfinite(t).all()`,
    which builds two full-size temporary tensors: it runs on every registration step."""
    if tensor.numel() == 0:
        return True
    smallest, largest = torch.aminmax(tensor.detach())
    return math.isfinite(smallest.item()) and math.isfinite(largest.item())


def check_image_pair(moving, fixed, expected_shape=None) -> None:
    """Check both images of a pair, then that their shapes match each other."""
    check_images("moving", moving, expected_shape)
    check_images("fixed", fixed, expected_shape)
    if moving.shape != fixed.shape:
        raise ValueError(
            f"moving and fixed must have the same shape, got {list(moving.shape)} and {list(fixed.shape)}"
        )
