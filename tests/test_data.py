"""helpers.data: the bundled MNIST subset, its splits, the opt-in full-MNIST path, pairs."""

import shutil
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch

from helpers import data
from helpers.data import (
    BUNDLED_SHA256,
    SPLITS,
    DataIntegrityError,
    MNISTUnavailableError,
    load_bundled,
    load_digits,
    random_affine,
    random_pairs,
    sha256_of_arrays,
)

SPLIT_SIZES = {"train": 300, "classifier": 100, "heldout": 100}


# --- bundled subset -----------------------------------------------------------------------


def test_bundled_arrays_have_500_images_of_each_digit():
    images, labels = load_bundled()
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (5000,)
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0
    assert sha256_of_arrays(images, labels) == BUNDLED_SHA256


def test_load_bundled_returns_copies_that_callers_cannot_use_to_corrupt_the_cache():
    images, labels = load_bundled()
    images[:] = 7
    labels[:] = 3
    fresh_images, fresh_labels = load_bundled()
    assert sha256_of_arrays(fresh_images, fresh_labels) == BUNDLED_SHA256


@pytest.mark.parametrize("split", SPLITS)
def test_split_tensor_format(split):
    digits = load_digits(4, split)
    assert digits.shape == (SPLIT_SIZES[split], 1, 28, 28)
    assert digits.dtype == torch.float32 and digits.device.type == "cpu" and digits.is_contiguous()
    assert digits.min() == 0 and digits.max() == 1


@pytest.mark.parametrize("digit", range(10))
def test_splits_of_a_digit_are_its_500_images_in_order_without_overlap(digit):
    images, labels = load_bundled()
    expected = torch.from_numpy(images[labels == digit]).float().unsqueeze(1) / 255
    splits = [load_digits(digit, split) for split in SPLITS]
    assert [len(s) for s in splits] == [300, 100, 100]
    # Concatenated in SPLITS order they are exactly the digit's 500 images, each once:
    # the splits are disjoint, cover the digit, and hold only images labelled `digit`.
    assert torch.equal(torch.cat(splits), expected)


def test_load_digits_is_deterministic_and_returns_new_tensors():
    first = load_digits(3, "heldout")
    first.zero_()
    assert torch.equal(load_digits(3, "heldout"), load_digits(3, "heldout"))
    assert load_digits(3, "heldout").max() == 1


def corrupt_copy(tmp_path, monkeypatch, change):
    """Point the package at a copy of the bundled file with ``change(images)`` applied."""
    images, labels = load_bundled()
    change(images)
    copy = tmp_path / "mnist_5k.npz"
    np.savez_compressed(copy, images=images, labels=labels)
    monkeypatch.setattr(data, "BUNDLED_FILE", copy)
    return copy, sha256_of_arrays(images, labels)


def test_changed_pixel_fails_the_checksum_with_a_helpful_message(tmp_path, monkeypatch):
    def flip_one_pixel(images):
        images[1234, 14, 14] ^= 1

    copy, found = corrupt_copy(tmp_path, monkeypatch, flip_one_pixel)
    with pytest.raises(DataIntegrityError) as caught:
        load_digits(2)
    message = str(caught.value)
    for expected_text in (str(copy), BUNDLED_SHA256, found, "scripts/build_mnist_subset.py"):
        assert expected_text in message
    with pytest.raises(DataIntegrityError, match="checksum"):
        load_bundled()


def test_unreadable_bundled_file_raises_integrity_error(tmp_path, monkeypatch):
    garbage = tmp_path / "mnist_5k.npz"
    shutil.copy(data.BUNDLED_FILE, garbage)
    garbage.write_bytes(garbage.read_bytes()[:1000])
    monkeypatch.setattr(data, "BUNDLED_FILE", garbage)
    with pytest.raises(DataIntegrityError, match=r"cannot read .*mnist_5k\.npz.*build_mnist_subset\.py"):
        load_bundled()


def test_reshaped_arrays_fail_even_with_the_same_bytes(tmp_path, monkeypatch):
    images, labels = load_bundled()
    reshaped = tmp_path / "mnist_5k.npz"
    np.savez_compressed(reshaped, images=images.reshape(5000, 784), labels=labels)
    monkeypatch.setattr(data, "BUNDLED_FILE", reshaped)
    with pytest.raises(DataIntegrityError, match=r"'images' should be uint8 \(5000, 28, 28\)"):
        load_bundled()


# --- argument checks ----------------------------------------------------------------------


@pytest.mark.parametrize("digit", [-1, 10, 3.0, True, "3", None])
def test_bad_digit(digit):
    with pytest.raises(ValueError, match=r"digit must be an int in 0\.\.9, got"):
        load_digits(digit)


def test_numpy_integer_digit_is_accepted():
    assert torch.equal(load_digits(np.int64(5)), load_digits(5))


def test_bad_split():
    with pytest.raises(ValueError, match=r"unknown split 'test'.*'train', 'classifier', 'heldout'"):
        load_digits(1, "test")


def test_bad_source():
    with pytest.raises(ValueError, match=r"unknown source 'full'.*'bundled', 'mnist'"):
        load_digits(1, source="full")


# --- full MNIST (a tiny fake in torchvision's layout) -----------------------------------

TRAIN_LABELS = [7, 2] * 10  # ten 7s and ten 2s: 9 + 1 of each after the 90/10 cut
TEST_LABELS = [2, 7, 7, 1, 2, 7, 0, 2, 7, 9]


def pattern_images(count, first_id):
    """uint8 [count, 28, 28]; image k is an asymmetric ramp shifted by its id, first_id + k."""
    ramp = np.arange(28 * 28).reshape(28, 28)
    return np.stack([(ramp + 7 * (first_id + k)) % 256 for k in range(count)]).astype(np.uint8)


TRAIN_IMAGES = pattern_images(len(TRAIN_LABELS), first_id=0)
TEST_IMAGES = pattern_images(len(TEST_LABELS), first_id=len(TRAIN_LABELS))


def write_idx(path, array, magic):
    """Uncompressed IDX file: big-endian magic, then each dimension, then the uint8 data."""
    path.write_bytes(struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes())


@pytest.fixture
def fake_mnist_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", TRAIN_IMAGES, magic=2051)
    write_idx(raw / "train-labels-idx1-ubyte", np.array(TRAIN_LABELS, np.uint8), magic=2049)
    write_idx(raw / "t10k-images-idx3-ubyte", TEST_IMAGES, magic=2051)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array(TEST_LABELS, np.uint8), magic=2049)
    return tmp_path


def as_tensor(images):
    return torch.from_numpy(images).float().unsqueeze(1) / 255


@pytest.mark.parametrize(
    ("digit", "split", "images", "indices"),
    [
        (7, "train", TRAIN_IMAGES, [0, 2, 4, 6, 8, 10, 12, 14, 16]),
        (7, "classifier", TRAIN_IMAGES, [18]),
        (7, "heldout", TEST_IMAGES, [1, 2, 5, 8]),
        (2, "train", TRAIN_IMAGES, [1, 3, 5, 7, 9, 11, 13, 15, 17]),
        (2, "classifier", TRAIN_IMAGES, [19]),
        (2, "heldout", TEST_IMAGES, [0, 4, 7]),
        (9, "heldout", TEST_IMAGES, [9]),
    ],
)
def test_full_mnist_splits(fake_mnist_root, digit, split, images, indices):
    digits = load_digits(digit, split, source="mnist", root=fake_mnist_root)
    assert digits.dtype == torch.float32 and digits.is_contiguous()
    assert torch.equal(digits, as_tensor(images[indices]))


def test_full_mnist_root_from_environment(fake_mnist_root, monkeypatch):
    monkeypatch.setenv("HELPERS_MNIST_ROOT", str(fake_mnist_root))
    assert torch.equal(load_digits(7, "classifier", source="mnist"), as_tensor(TRAIN_IMAGES[[18]]))


def test_missing_full_mnist_raises_instead_of_falling_back(tmp_path):
    with pytest.raises(MNISTUnavailableError) as caught:
        load_digits(3, "heldout", source="mnist", root=tmp_path, download=False)
    message = str(caught.value)
    for expected_text in (str(tmp_path), 'source="bundled"', "download=True", "t10k-labels-idx1-ubyte"):
        assert expected_text in message
    assert isinstance(caught.value, RuntimeError)


def test_failed_download_raises_with_its_cause(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    def offline_download(self):
        raise URLError("no network in this test")

    monkeypatch.setattr(MNIST, "download", offline_download)
    with pytest.raises(MNISTUnavailableError, match="no network in this test") as caught:
        load_digits(3, source="mnist", root=tmp_path, download=True)
    assert isinstance(caught.value.__cause__, URLError)


# --- random pairs -------------------------------------------------------------------------

N_IMAGES = 6
NUMBERED_IMAGES = torch.arange(N_IMAGES, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 28, 28)


def test_random_pairs_shapes_and_draws_from_images():
    moving, fixed = random_pairs(NUMBERED_IMAGES, 32, torch.Generator().manual_seed(0))
    assert moving.shape == fixed.shape == (32, 1, 28, 28)
    for batch in (moving, fixed):
        ids = batch[:, 0, 0, 0]
        assert torch.equal(batch, ids.view(-1, 1, 1, 1).expand_as(batch))
        assert set(ids.long().tolist()) <= set(range(N_IMAGES))
    assert not torch.equal(moving, fixed)


def test_random_pairs_is_deterministic_for_a_seeded_generator():
    def draw(seed):
        return random_pairs(NUMBERED_IMAGES, 16, torch.Generator().manual_seed(seed))

    assert all(torch.equal(a, b) for a, b in zip(draw(1), draw(1)))
    assert not all(torch.equal(a, b) for a, b in zip(draw(1), draw(2)))


@pytest.mark.parametrize(
    ("images", "problem"),
    [
        (torch.zeros(4, 28, 28), r"images must be a tensor \[N, 1, H, W\], got \(4, 28, 28\)"),
        (torch.zeros(4, 3, 28, 28), r"images must be a tensor \[N, 1, H, W\], got \(4, 3, 28, 28\)"),
        (np.zeros((4, 1, 28, 28)), r"images must be a tensor \[N, 1, H, W\], got ndarray"),
        (torch.zeros(0, 1, 28, 28), "images is empty"),
    ],
)
def test_random_pairs_rejects_bad_images(images, problem):
    with pytest.raises(ValueError, match=problem):
        random_pairs(images, 4, torch.Generator())


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, "4"])
def test_random_pairs_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got"):
        random_pairs(NUMBERED_IMAGES, batch_size, torch.Generator())


def test_evaluation_pairs_are_reproducible_and_never_self_pairs():
    from helpers.data import evaluation_pairs

    moving, fixed = evaluation_pairs(5, 5, n=500, seed=3)
    again = evaluation_pairs(5, 5, n=500, seed=3)
    assert moving.shape == fixed.shape == (500, 1, 28, 28)
    assert torch.equal(moving, again[0]) and torch.equal(fixed, again[1])
    assert not (moving == fixed).flatten(1).all(1).any()
    heldout = load_digits(5, "heldout").flatten(1)
    assert all((heldout == image).all(1).any() for image in fixed.flatten(1)[:20])
    sevens = load_digits(7, "heldout").flatten(1)
    moving_7, fixed_5 = evaluation_pairs(7, 5, n=10)
    assert all((sevens == image).all(1).any() for image in moving_7.flatten(1))
    with pytest.raises(ValueError, match="n must be a positive int"):
        evaluation_pairs(5, 5, n=0)


def centroids(images):
    """(row, column) centre of mass of each image [N, 1, H, W], in pixels: [N, 2]."""
    rows = torch.arange(images.shape[2], dtype=images.dtype).view(1, -1, 1)
    cols = torch.arange(images.shape[3], dtype=images.dtype).view(1, 1, -1)
    mass = images[:, 0].sum((1, 2))
    return torch.stack([(images[:, 0] * rows).sum((1, 2)) / mass, (images[:, 0] * cols).sum((1, 2)) / mass], 1)


def test_random_affine_moves_a_centred_dot_by_its_shift_alone():
    """Turning and scaling act about the image's centre, so a dot there only moves with the
    shift: at most 5% of the size (1.4 pixels at 28 × 28) per axis and unit of amount, times
    the scale (at most 1.1)."""
    dots = torch.zeros(64, 1, 28, 28)
    dots[:, :, 13:15, 13:15] = 1.0
    for amount in (1.0, 2.0):
        moved = centroids(random_affine(dots, amount, torch.Generator().manual_seed(0))) - 13.5
        assert moved.abs().max() <= 0.05 * 28 * amount * (1 + 0.1 * amount) + 1e-3
        assert moved.abs().max() > 0.6 * 0.05 * 28 * amount  # the draws span the range


def test_random_affine_turns_and_keeps_its_images():
    images = load_digits(5, "train")[:16]
    same = random_affine(images, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, images, rtol=0, atol=1e-5)
    first, again, other = (random_affine(images, 1.0, torch.Generator().manual_seed(seed)) for seed in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == images.shape and first.dtype == images.dtype
    assert (first - images).abs().amax((1, 2, 3)).min() > 0.1  # every image changed
    assert first.min() >= 0 and first.max() <= 1  # bilinear: no new extremes


@pytest.mark.parametrize(
    ("images", "amount", "problem"),
    [
        (torch.zeros(4, 28, 28), 1.0, r"images must be a floating-point tensor \[N, C, H, W\], got \(4, 28, 28\)"),
        (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), 1.0, "images must be a floating-point tensor"),
        (np.zeros((4, 1, 28, 28)), 1.0, "got ndarray"),
        (torch.zeros(4, 1, 28, 28), -0.5, "amount must be a finite number >= 0, got -0.5"),
        (torch.zeros(4, 1, 28, 28), float("nan"), "amount must be a finite number >= 0, got nan"),
        (torch.zeros(4, 1, 28, 28), True, "amount must be a finite number >= 0, got True"),
    ],
)
def test_random_affine_rejects_bad_input(images, amount, problem):
    with pytest.raises(ValueError, match=problem):
        random_affine(images, amount, torch.Generator())


def test_random_affine_samples_where_affine_grid_says():
    """The documented map, (x, y) ↦ (cos·x − sin·y + shift_x, sin·x + cos·y + shift_y) with
    cos, sin = cos θ / scale, sin θ / scale, laid out by F.affine_grid for comparison."""
    images = load_digits(5, "train")[:32]
    got = random_affine(images, 1.0, torch.Generator().manual_seed(3))
    draws = torch.rand(32, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    angle, scale, shift = draws[:, 0] * np.pi / 15, 1 + 0.1 * draws[:, 1], 0.1 * draws[:, 2:]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.float(), list(images.shape), align_corners=False)
    expected = torch.nn.functional.grid_sample(images, grid, padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
