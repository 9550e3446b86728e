"""MNIST digit images, selected by label and by a fixed split.

The full MNIST (60,000 training and 10,000 test images) ships in this package as ``mnist.npz``
(provenance, licence and rebuild instructions in ``README.md`` next to this file) and is
checksum-verified on its first load; nothing is downloaded.

Each digit's images are split by their position among that digit's images, in file order:

============== ================================================ ==========================================
split          images                                           used for
============== ================================================ ==========================================
``train``      the digit's MNIST training images, all but the   training the registration networks
               last n // 10 (4,879 of the 5,421 5s)
``classifier`` the last n // 10 of them (542 5s; 5,996 images   training the frozen judges only
               of all ten digits)
``heldout``    the digit's MNIST test images (892 5s, 1,028 7s) evaluation pairs, judges' accuracy
============== ================================================ ==========================================

(n: that digit's number of training images.) No registration network trains on a judge's
images or on an evaluation image, and no judge trains on either. ``SPLIT_SIZES`` has every count.

Images are returned as float32 tensors [N, 1, 28, 28] with values in [0, 1]
(pixel / 255; 0 is background, 1 is full ink), contiguous, on the CPU.
"""

import functools
import hashlib
import numbers
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "classifier", "heldout")
MNIST_FILE = Path(__file__).with_name("mnist.npz")
#: SHA-256 of the four arrays' bytes, in the order of ``_SHAPES`` (C-order uint8): see `mnist_sha256`.
MNIST_SHA256 = "06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16"
_SHAPES = {
    "train_images": (60000, 28, 28),
    "train_labels": (60000,),
    "test_images": (10000, 28, 28),
    "test_labels": (10000,),
}
_REBUILD_HINT = "Rebuild it from the repository root with `python scripts/build_mnist.py`, or reinstall the package."


class DataIntegrityError(RuntimeError):
    """The shipped data file is unreadable or does not match its recorded checksum."""


def mnist_sha256(arrays: dict) -> str:
    """Hex SHA-256 of the four arrays' bytes (C order), in the order train_images, train_labels,
    test_images, test_labels."""
    digest = hashlib.sha256()
    for name in _SHAPES:
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def load_mnist() -> dict[str, np.ndarray]:
    """The shipped MNIST, checksum-verified, as fresh writable copies: ``train_images`` uint8
    [60000, 28, 28], ``train_labels`` uint8 [60000], ``test_images`` uint8 [10000, 28, 28],
    ``test_labels`` uint8 [10000], in MNIST's own order. Raises ``DataIntegrityError`` if the file
    is unreadable or fails its checksum."""
    return {name: array.copy() for name, array in _read_mnist(MNIST_FILE).items()}


def load_digits(digit: int, split: str = "train") -> torch.Tensor:
    """Images of one digit from one split (see the module docstring), in file order.

    Args:
        digit: the label, an int in 0..9.
        split: one of ``SPLITS``.

    Returns float32 [N, 1, 28, 28] in [0, 1], contiguous, on the CPU (N: ``SPLIT_SIZES[split][digit]``).
    Raises ``ValueError`` for bad arguments and ``DataIntegrityError`` for a corrupted data file.
    """
    pixels = np.array(_digit_images(_checked_digit(digit), _checked_split(split)), dtype=np.float32)  # a copy of our own
    return torch.from_numpy(pixels).unsqueeze(1).div_(255)


def split_sizes() -> dict[str, tuple[int, ...]]:
    """How many images each split holds, per digit 0..9: {split: (count of 0s, ..., count of 9s)}."""
    return {split: tuple(len(_digit_images(digit, split)) for digit in range(10)) for split in SPLITS}


def _checked_digit(digit) -> int:
    if isinstance(digit, bool) or not isinstance(digit, numbers.Integral) or not 0 <= digit <= 9:
        raise ValueError(f"digit must be an int in 0..9, got {digit!r}")
    return int(digit)


def _checked_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


@functools.lru_cache(maxsize=None)
def _digit_images(digit: int, split: str) -> np.ndarray:
    """Read-only uint8 [N, 28, 28]: one digit's images of one split; cached, so never hand these out."""
    arrays = _read_mnist(MNIST_FILE)
    part = "test" if split == "heldout" else "train"
    selected = arrays[f"{part}_images"][arrays[f"{part}_labels"] == digit]
    if split != "heldout":
        cut = len(selected) - len(selected) // 10
        selected = selected[:cut] if split == "train" else selected[cut:]
    selected = np.ascontiguousarray(selected)
    selected.flags.writeable = False
    return selected


def random_pairs(
    images: torch.Tensor, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` independent (moving, fixed) pairs, uniformly with replacement.

    ``images`` is [N, 1, H, W]; returns ``(moving, fixed)``, each [batch_size, 1, H, W],
    with the dtype and device of ``images``. Indices come from ``torch.randint`` with
    ``generator`` (a CPU generator), so a seeded generator gives the same pairs; a pair
    may repeat an image (probability 1/N).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, 1, H, W], got {shape}")
    if len(images) == 0:
        raise ValueError("images is empty; need at least one image to draw pairs from")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    moving_index, fixed_index = torch.randint(len(images), (2, batch_size), generator=generator)
    return images[moving_index], images[fixed_index]


def random_affine(images: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Each image turned, scaled and shifted by its own small random affine map: [N, C, H, W].

    With ``amount`` 1, each image is rotated by up to ±12°, scaled by up to ±10% and shifted by
    up to ±5% of its size (±1.4 pixels at 28 × 28), uniformly at random and independently;
    other amounts scale all three ranges. Pixels come from bilinear interpolation, and what
    comes in from outside the image is background (0). Draws 4·N numbers from ``generator``
    (a CPU generator), so a seeded generator gives the same maps.

    Seeing each training image slightly changed every time narrows the gap between how well a
    network registers its training images and held-out ones (``TrainConfig.augment``; chapter 03,
    section 8, measures it).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a floating-point tensor [N, C, H, W], got {shape}")
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or not (0 <= amount < float("inf")):
        raise ValueError(f"amount must be a finite number >= 0, got {amount!r}")
    draws = (torch.rand(len(images), 4, generator=generator, dtype=torch.float64) * 2 - 1) * float(amount)
    angle = draws[:, 0] * (12 * np.pi / 180)
    scale = 1 + 0.1 * draws[:, 1]
    shift = 0.1 * draws[:, 2:]  # affine_grid's coordinates run over [-1, 1]: 0.1 is 5% of the size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Where each output pixel reads from, in grid_sample's (x, y) ∈ [-1, 1] (pixel centres):
    # the map (x, y) ↦ (cos·x − sin·y + shift_x, sin·x + cos·y + shift_y) about the centre.
    # (What F.affine_grid computes, without its batched matrix product, which is slower here.)
    height, width = images.shape[2:]
    y = ((torch.arange(height, dtype=torch.float64) * 2 + 1) / height - 1).view(1, -1, 1)
    x = ((torch.arange(width, dtype=torch.float64) * 2 + 1) / width - 1).view(1, 1, -1)
    cos, sin, shift = cos.view(-1, 1, 1), sin.view(-1, 1, 1), shift.view(-1, 2, 1, 1)
    grid = torch.stack([cos * x - sin * y + shift[:, 0], sin * x + cos * y + shift[:, 1]], dim=-1)
    grid = grid.to(images.device, images.dtype)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@functools.lru_cache(maxsize=1)
def _read_mnist(path: Path) -> dict[str, np.ndarray]:
    """Read-only, verified arrays from ``path``; cached, so never hand these out."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in _SHAPES}
    except Exception as error:  # any failure to read counts as a broken file; the cause is chained
        raise DataIntegrityError(f"cannot read the MNIST file {path}: {error!r}. {_REBUILD_HINT}") from error
    for name, shape in _SHAPES.items():
        if arrays[name].dtype != np.uint8 or arrays[name].shape != shape:
            raise DataIntegrityError(
                f"MNIST file {path}: {name!r} should be uint8 {shape}, "
                f"found {arrays[name].dtype} {arrays[name].shape}. {_REBUILD_HINT}"
            )
    found = mnist_sha256(arrays)
    if found != MNIST_SHA256:
        raise DataIntegrityError(
            f"MNIST file {path} failed its checksum: expected SHA-256 {MNIST_SHA256}, "
            f"found {found}. The file is corrupted or was changed. {_REBUILD_HINT}"
        )
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


def evaluation_pairs(
    moving_digit: int, fixed_digit: int, n: int = 256, seed: int = 1234, split: str = "heldout",
    first: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (moving, fixed) pairs drawn from one split, each [n, 1, 28, 28].

    Moving images are ``n`` *distinct* images of ``moving_digit`` (so an interval over images
    counts as many images as there are pairs); fixed images are images of ``fixed_digit`` drawn
    uniformly with replacement, never the pair's moving image itself. The draws come from a
    generator seeded with ``seed``: the same arguments always give the same pairs.
    ``first``: draw from the first that many images of the split only (e.g. ``split="train",
    first=300``: pairs of the images a ``TrainConfig(train_size=300)`` network trained on).
    ``evaluation_indices`` says which images lie behind them.
    """
    moving_index, fixed_index = evaluation_indices(moving_digit, fixed_digit, n, seed, split, first)
    return load_digits(moving_digit, split)[moving_index], load_digits(fixed_digit, split)[fixed_index]


def evaluation_indices(
    moving_digit: int, fixed_digit: int, n: int = 256, seed: int = 1234, split: str = "heldout",
    first: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices [n] into ``load_digits(moving_digit, split)`` and ``load_digits(fixed_digit,
    split)`` of ``evaluation_pairs(moving_digit, fixed_digit, n, seed, split)``: the moving ones
    distinct, so each pair has an image of its own (what a bootstrap over images resamples)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    moving_count = len(_digit_images(_checked_digit(moving_digit), _checked_split(split)))
    fixed_count = len(_digit_images(_checked_digit(fixed_digit), split))
    if first is not None:
        if isinstance(first, bool) or not isinstance(first, numbers.Integral) or first < 2:
            raise ValueError(f"first must be None or an int >= 2, got {first!r}")
        moving_count, fixed_count = min(moving_count, first), min(fixed_count, first)
    if n > moving_count:
        where = f"the first {first} images of the {split!r} split" if first is not None else f"the {split!r} split"
        raise ValueError(
            f"n = {n} pairs need {n} distinct moving {moving_digit}s, but {where} holds "
            f"{moving_count}; ask for at most {moving_count}"
        )
    generator = torch.Generator().manual_seed(seed)
    moving_index = torch.randperm(moving_count, generator=generator)[:n]
    fixed_index = torch.randint(fixed_count - (moving_digit == fixed_digit), (n,), generator=generator)
    if moving_digit == fixed_digit:  # skip the moving image itself: shift indices at or above it
        fixed_index = fixed_index + (fixed_index >= moving_index).long()
    return moving_index, fixed_index
