"""Registration modules, with icon_registration's interface and none of its hidden state.

A registration module maps a pair of images (moving A, fixed B) to a transform φ such
that A ∘ φ ≃ B:

    phi = module(moving, fixed)                 # a function of coordinates
    warped = as_function(moving)(phi(module.identity_map))   # ≃ fixed

Every module also exposes `steps(moving, fixed)`, which yields one `Step` per call of an
elementary (leaf) module, in order. `forward` is defined as the last step's transform, so
the per-step view (`helpers.analysis.trace_steps`) and the loss see one and the same
composition: there is no second implementation to drift.
"""

from typing import Iterator, NamedTuple

import torch
from torch import nn

from .coordinates import all_finite, check_image_pair, identity_map
from .warping import Transform, as_function, compose, displacement_transform


class Step(NamedTuple):
    """One call of a leaf module inside a (possibly nested) registration.

    moving, fixed: [B, C, H, W], the images the leaf was given (moving is the original
        moving image warped by every earlier step);
    displacement: [B, 2, H, W], what the leaf's network returned;
    transform: the composition of every step so far, as a function of coordinates.
    """

    moving: torch.Tensor
    fixed: torch.Tensor
    displacement: torch.Tensor
    transform: Transform


def check_finite(displacement: torch.Tensor) -> None:
    """Raise FloatingPointError if a displacement the network returned holds NaN or inf."""
    if not all_finite(displacement):
        # Interpolating at NaN/inf coordinates can crash PyTorch's CPU sampler outright.
        raise FloatingPointError("the wrapped network returned NaN or inf displacements: its weights have diverged")


class RegistrationModule(nn.Module):
    r"""Base class: `forward(moving, fixed)` returns φ with moving ∘ φ ≃ fixed.

    Before use, call `assign_identity_map(shape)` (on this module or a parent) with the
    shape [B, C, H, W] of the images it will see; it fixes the coordinate system and
    is passed down to every child registration module. Using the module before that,
    or with images of another channel count or size, raises ValueError.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("_identity_map", None, persistent=False)
        self.image_shape = None  # (C, H, W) once assigned

    def assign_identity_map(self, input_shape) -> None:
        """Fix the image shape [B, C, H, W] this module works on (B is ignored)."""
        input_shape = tuple(int(n) for n in input_shape)
        if len(input_shape) != 4:
            raise ValueError(f"assign_identity_map expects an image shape [B, C, H, W], got {list(input_shape)}")
        self.image_shape = input_shape[1:]
        self._identity_map = identity_map(input_shape)
        for child in self.children():
            if isinstance(child, RegistrationModule):
                child.assign_identity_map(input_shape)

    @property
    def identity_map(self) -> torch.Tensor:
        """The identity grid [1, 2, H, W]; an error until `assign_identity_map` has been called."""
        if self._identity_map is None:
            raise ValueError(
                f"{type(self).__name__} has no identity map: call "
                "assign_identity_map(images.shape) with the [B, C, H, W] shape of your images first"
            )
        return self._identity_map

    @property
    def spacing(self) -> torch.Tensor:
        """Distance between neighbouring pixels in coordinate units: 1 / (N - 1) per axis."""
        height, width = self.identity_map.shape[2:]
        return torch.tensor([1.0 / (height - 1), 1.0 / (width - 1)], dtype=torch.float64)

    def check_pair(self, moving, fixed) -> None:
        """Raise ValueError unless moving and fixed are valid images of the assigned shape."""
        self.identity_map  # noqa: B018  -- raises if not assigned
        check_image_pair(moving, fixed, self.image_shape)

    @staticmethod
    def as_function(image: torch.Tensor) -> Transform:
        return as_function(image)

    def steps(self, moving: torch.Tensor, fixed: torch.Tensor) -> Iterator[Step]:
        """Yield a `Step` for each leaf call, in order (inputs are not re-checked here)."""
        raise NotImplementedError

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> Transform:
        """Register moving to fixed: return φ, a function of coordinates, with moving ∘ φ ≃ fixed."""
        self.check_pair(moving, fixed)
        *_, last = self.steps(moving, fixed)
        return last.transform


class FunctionFromVectorField(RegistrationModule):
    """Wrap a network that returns a displacement field D [B, 2, H, W]: φ(x) = x + D(x).

    D is in coordinate units (1 = the image's full height or width) and is interpolated
    bilinearly wherever φ is evaluated.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def steps(self, moving, fixed):
        displacement = self.net(moving, fixed)
        expected = (moving.shape[0], 2, *self.identity_map.shape[2:])
        if tuple(displacement.shape) != expected:
            raise ValueError(
                f"the wrapped network returned a displacement of shape {list(displacement.shape)}, "
                f"expected {list(expected)}"
            )
        check_finite(displacement)
        yield Step(moving, fixed, displacement, displacement_transform(displacement))


class TwoStepRegistration(RegistrationModule):
    """φ = netPhi(A, B); ψ = netPsi(A ∘ φ, B); the result is φ ∘ ψ.

    (The attribute names are icon_registration's, so state dicts keep its keys.)
    netPsi sees the *original* moving image warped once by φ, and its transform is
    applied before φ: x ↦ φ(ψ(x)). (If netPsi is itself a nested registration, its own
    later calls warp that image again: nest to the left, as the post does, to keep every
    call's input one warp of the original.)
    """

    def __init__(self, netPhi: RegistrationModule, netPsi: RegistrationModule):
        super().__init__()
        self.netPhi = netPhi
        self.netPsi = netPsi

    def steps(self, moving, fixed):
        for step in self.netPhi.steps(moving, fixed):
            yield step
        phi = step.transform
        warped = as_function(moving)(phi(self.identity_map))
        for step in self.netPsi.steps(warped, fixed):
            yield step._replace(transform=compose(phi, step.transform))
