"""Controls for the 7 → 5 drift (chapter 07): inputs on which any pull toward a 5 cannot be alignment.

* `control_pairs`: the same moving images against fixed images that leave nothing to align to
  a 5: the moving image itself (the loss is smallest at the identity), a blank image, noise.
* `repeat_field`: a fixed displacement field applied again and again, composed as the network's
  own steps are: the network's bias alone, or its mean field over training pairs, with the input
  ignored.
"""

import torch

from .coordinates import check_images, identity_map
from .warping import as_function, compose, displacement_transform

CONTROL_KINDS = ("identity", "blank", "noise")


def control_pairs(moving: torch.Tensor, kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(moving, fixed) for a control: fixed = moving itself ("identity"), zeros ("blank"), or
    uniform noise in [0, 1], its own per image, from a generator seeded with `seed` ("noise")."""
    check_images("moving", moving)
    if kind not in CONTROL_KINDS:
        raise ValueError(f"kind must be one of {CONTROL_KINDS}, got {kind!r}")
    if kind == "identity":
        return moving, moving.clone()
    if kind == "blank":
        return moving, torch.zeros_like(moving)
    return moving, torch.rand(moving.shape, generator=torch.Generator().manual_seed(seed)).to(moving.dtype)


def repeat_field(images: torch.Tensor, field: torch.Tensor, times: int) -> torch.Tensor:
    """Warp `images` [B, C, H, W] by the field `field` ([2, H, W], or [B, 2, H, W]: one per image)
    applied `times` times in composition, Φ_k = Φ_{k−1} ∘ (id + field), as the world composes its
    steps. Returns every stage, [times + 1, B, C, H, W] (stage 0 is the input)."""
    check_images("images", images)
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ValueError(f"times must be an int >= 1, got {times!r}")
    if field.dim() == 3:
        field = field.unsqueeze(0).expand(len(images), -1, -1, -1)
    if field.dim() != 4 or field.shape[0] != len(images) or field.shape[1:] != (2, *images.shape[2:]):
        raise ValueError(f"field must be [2, H, W] or [B, 2, H, W] = {[len(images), 2, *images.shape[2:]]}, "
                         f"got {list(field.shape)}")
    grid = identity_map(images.shape)
    step = displacement_transform(field.contiguous())
    phi = step
    stages = [images]
    for _ in range(times):
        stages.append(as_function(images)(phi(grid)))
        phi = compose(phi, step)
    return torch.stack(stages)
