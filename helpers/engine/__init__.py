"""The engine: how helpers computes bilinear sampling fast. The maths is in helpers.warping;
this package only makes it faster, and is checked against it (README.md beside this file).

The teaching modules reach the engine through this one switch, two functions on images
[B, C, H, W] and coordinates [B or 1, 2, H', W'] (row, column in [0, 1], see
`helpers.coordinates`):

    sample(values, coordinates)          values interpolated at the coordinates
    chain(displacements, coordinates)    φ_1 ∘ … ∘ φ_K at the coordinates, φ_k(x) = x + D_k(x)

Each has two implementations that give the same numbers (to float rounding,
tests/test_sampler.py):

- "reference": `torch.nn.functional.grid_sample` (bilinear, align_corners=True, border
  padding), one call per image or field: icon_registration's arithmetic, operation for
  operation (`reference_sample`, `reference_chain`).
- "compiled": _bilinear.c, a small C kernel with a hand-written backward pass, built by the
  system's C compiler on first use and cached (engine.kernel); its autograd nodes are in
  engine.compiled. It takes points eight at a time and walks a whole chain of fields in one
  call, where the reference makes a grid_sample call (and several tensor operations) per field.

The compiled kernel serves float32 tensors on the CPU whenever a C compiler is available;
everything else (float64, CUDA) uses the reference. Set the environment variable
HELPERS_SAMPLER=reference to use grid_sample everywhere, or `with using("reference"): ...`.
The compiled nodes have first derivatives only (create_graph=True and torch.func need the
reference). engine.fused, the training loss as one node, is what helpers.train runs.
"""

import contextlib
import os
from typing import Sequence

import torch
import torch.nn.functional as F

from . import compiled, kernel
from .compiled import FIRST_ORDER_ONLY
from .kernel import compiled_kernel

IMPLEMENTATIONS = ("compiled", "reference")


def _checked(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {IMPLEMENTATIONS}")
    return name


_requested = _checked(os.environ.get("HELPERS_SAMPLER", "compiled"))


@contextlib.contextmanager
def using(name: str):
    """Use sampler `name` ("compiled" or "reference") inside the with-block."""
    global _requested
    previous, _requested = _requested, _checked(name)
    try:
        yield
    finally:
        _requested = previous


def active(*tensors: torch.Tensor) -> str:
    """The implementation that serves these tensors: "compiled" or "reference"."""
    if _requested == "reference" or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return "reference"
    return "compiled" if compiled_kernel() is not None else "reference"


def reference_sample(values: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """values [B, C, H, W] at coordinates [B, 2, H', W'] -> [B, C, H', W'], with grid_sample."""
    # grid_sample wants (x = column, y = row) in [-1, 1], channels last.
    grid = torch.stack((coordinates[:, 1], coordinates[:, 0]), dim=-1) * 2.0 - 1.0
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=True)


def reference_chain(displacements: Sequence[torch.Tensor], coordinates: torch.Tensor, batch: int) -> torch.Tensor:
    """x ← x + D(x) for D = D_K, …, D_1, each sampled with grid_sample -> [batch, 2, H', W']."""
    for displacement in reversed(displacements):
        coordinates = coordinates + reference_sample(batched(displacement, batch), batched(coordinates, batch))
    return batched(coordinates, batch)


def sample(values: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """values [B, C, H, W] at coordinates [B or 1, 2, H', W'] -> [B, C, H', W'].

    Shapes are not checked here: `helpers.warping.interpolate` does that."""
    if active(values, coordinates) == "compiled" and min(values.shape[2:]) >= 2:
        return compiled.sample(values, coordinates)
    return reference_sample(values, coordinates.expand(len(values), -1, -1, -1))


def chain(displacements: Sequence[torch.Tensor], coordinates: torch.Tensor) -> torch.Tensor:
    """φ_1 ∘ … ∘ φ_K at coordinates [B or 1, 2, H', W'], with φ_k(x) = x + D_k(x) and
    displacements = (D_1, …, D_K), each [B or 1, 2, H, W] with H, W >= 2: D_K is applied
    first -> [B, 2, H', W'].

    Other shapes are not checked here: `helpers.warping.DisplacementChain` does that."""
    for displacement in displacements:
        if displacement.dim() != 4 or min(displacement.shape[2:]) < 2:
            raise ValueError(
                f"a displacement field needs at least 2×2 pixels [B, 2, H, W], got {list(displacement.shape)}"
            )
    batch = max(len(coordinates), *(len(d) for d in displacements))
    if active(coordinates, *displacements) == "compiled":
        return compiled.chain(displacements, coordinates, batch)
    return reference_chain(displacements, coordinates, batch)


def batched(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """tensor [1 or batch, ...] as [batch, ...] (no autograd node when it already is)."""
    return tensor if len(tensor) == batch else tensor.expand(batch, *tensor.shape[1:])


__all__ = [
    "FIRST_ORDER_ONLY", "IMPLEMENTATIONS", "active", "batched", "chain", "compiled", "compiled_kernel", "kernel",
    "reference_chain", "reference_sample", "sample", "using",
]
