"""The post's network and loss in as few lines as we could: closures and grid_sample.

A baseline for benchmarks/performance.py, independent of helpers (and of its input checks,
step views and compiled sampler). It computes the same numbers as helpers and
icon_registration; performance.py checks that before it times anything.
"""

import torch
import torch.nn.functional as F


def warp(values, coordinates):
    """values [B, C, H, W] at coordinates [B or 1, 2, H, W] (row, column in [0, 1])."""
    grid = torch.stack((coordinates[:, 1], coordinates[:, 0]), -1) * 2 - 1
    grid = grid.expand(len(values), -1, -1, -1)
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=True)


def identity(size):
    axis = torch.arange(size, dtype=torch.float64) / (size - 1)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij")).float()[None]


class PlainNet(torch.nn.Module):
    """`fcnet` acting `steps` times in composition, each time on the moving image warped so far;
    forward returns the loss 2·SSD + λ·diffusion, as a scalar."""

    def __init__(self, fcnet, steps=9, lmbda=0.05, size=28):
        super().__init__()
        self.fcnet, self.steps, self.lmbda = fcnet, steps, lmbda
        self.register_buffer("grid", identity(size))

    def transform(self, moving, fixed):
        phi = lambda x: x  # noqa: E731
        warped = moving
        for step in range(self.steps):
            displacement = self.fcnet(warped, fixed)
            phi = (lambda phi, d: lambda x: phi(x + warp(d, x)))(phi, displacement)
            if step < self.steps - 1:
                warped = warp(moving, phi(self.grid))
        return phi

    def forward(self, moving, fixed):
        phi_grid = self.transform(moving, fixed)(self.grid)
        warped = warp(moving, phi_grid)
        u = self.grid - phi_grid
        diffusion = ((u[:, :, 1:] - u[:, :, :-1]) ** 2).mean() + ((u[:, :, :, 1:] - u[:, :, :, :-1]) ** 2).mean()
        return 2 * ((warped - fixed) ** 2).mean() + self.lmbda * diffusion * self.grid.shape[2] ** 2
