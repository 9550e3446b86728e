"""helpers.data: the shipped full MNIST, its splits, its checksum, evaluation pairs, random pairs."""

import shutil

import numpy as np
import pytest
import torch

from helpers import data
from helpers.data import (
    MNIST_SHA256,
    SPLITS,
    DataIntegrityError,
    evaluation_indices,
    evaluation_pairs,
    load_digits,
    load_mnist,
    mnist_sha256,
    random_affine,
    random_pairs,
    split_sizes,
)

# MNIST's label counts (training set, test set), as its authors publish them.
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


# --- the shipped MNIST --------------------------------------------------------------------


def test_the_shipped_file_is_the_full_mnist():
    arrays = load_mnist()
    assert arrays["train_images"].dtype == np.uint8 and arrays["train_images"].shape == (60000, 28, 28)
    assert arrays["test_images"].dtype == np.uint8 and arrays["test_images"].shape == (10000, 28, 28)
    assert tuple(np.bincount(arrays["train_labels"], minlength=10)) == TRAIN_COUNTS
    assert tuple(np.bincount(arrays["test_labels"], minlength=10)) == TEST_COUNTS
    assert arrays["train_images"].max() == 255 and arrays["train_images"].min() == 0
    assert mnist_sha256(arrays) == MNIST_SHA256


def test_load_mnist_returns_copies_that_callers_cannot_use_to_corrupt_the_cache():
    arrays = load_mnist()
    arrays["train_images"][:] = 7
    arrays["test_labels"][:] = 3
    assert mnist_sha256(load_mnist()) == MNIST_SHA256


def test_split_sizes_per_digit():
    sizes = split_sizes()
    assert sizes["heldout"] == TEST_COUNTS
    assert sizes["classifier"] == tuple(n // 10 for n in TRAIN_COUNTS)
    assert sizes["train"] == tuple(n - n // 10 for n in TRAIN_COUNTS)
    assert sizes["train"][5] == 4879 and sizes["heldout"][7] == 1028


@pytest.mark.parametrize("split", SPLITS)
def test_split_tensor_format(split):
    digits = load_digits(4, split)
    assert digits.shape == (split_sizes()[split][4], 1, 28, 28)
    assert digits.dtype == torch.float32 and digits.device.type == "cpu" and digits.is_contiguous()
    assert digits.min() == 0 and digits.max() == 1


@pytest.mark.parametrize("digit", [0, 5, 7, 9])
def test_splits_are_the_digits_training_images_in_order_then_its_test_images(digit):
    arrays = load_mnist()
    as_tensor = lambda images: torch.from_numpy(images).float().unsqueeze(1) / 255  # noqa: E731
    training = as_tensor(arrays["train_images"][arrays["train_labels"] == digit])
    test = as_tensor(arrays["test_images"][arrays["test_labels"] == digit])
    # train then classifier, concatenated, are exactly the digit's training images, each once:
    # the two splits are disjoint and cover them; heldout is the digit's test set.
    assert torch.equal(torch.cat([load_digits(digit, "train"), load_digits(digit, "classifier")]), training)
    assert torch.equal(load_digits(digit, "heldout"), test)


def test_load_digits_is_deterministic_and_returns_new_tensors():
    first = load_digits(3, "heldout")
    first.zero_()
    assert torch.equal(load_digits(3, "heldout"), load_digits(3, "heldout"))
    assert load_digits(3, "heldout").max() == 1


@pytest.fixture
def fresh_cache():
    """Empty helpers.data's caches before and after, so a test can point it at another file."""
    data._read_mnist.cache_clear(), data._digit_images.cache_clear()
    yield
    data._read_mnist.cache_clear(), data._digit_images.cache_clear()


def corrupt_copy(tmp_path, monkeypatch, change):
    """Point the package at a copy of the shipped file with ``change(arrays)`` applied."""
    arrays = load_mnist()
    change(arrays)
    copy = tmp_path / "mnist.npz"
    np.savez_compressed(copy, **arrays)
    monkeypatch.setattr(data, "MNIST_FILE", copy)
    return copy, arrays


def test_changed_pixel_fails_the_checksum_with_a_helpful_message(tmp_path, monkeypatch, fresh_cache):
    def flip_one_pixel(arrays):
        arrays["test_images"][1234, 14, 14] ^= 1

    copy, arrays = corrupt_copy(tmp_path, monkeypatch, flip_one_pixel)
    with pytest.raises(DataIntegrityError) as caught:
        load_digits(2)
    message = str(caught.value)
    for expected_text in (str(copy), MNIST_SHA256, mnist_sha256(arrays), "scripts/build_mnist.py"):
        assert expected_text in message
    with pytest.raises(DataIntegrityError, match="checksum"):
        load_mnist()


def test_unreadable_file_raises_integrity_error(tmp_path, monkeypatch, fresh_cache):
    garbage = tmp_path / "mnist.npz"
    shutil.copy(data.MNIST_FILE, garbage)
    garbage.write_bytes(garbage.read_bytes()[:1000])
    monkeypatch.setattr(data, "MNIST_FILE", garbage)
    with pytest.raises(DataIntegrityError, match=r"cannot read .*mnist\.npz.*build_mnist\.py"):
        load_mnist()


def test_reshaped_arrays_fail_even_with_the_same_bytes(tmp_path, monkeypatch, fresh_cache):
    def flatten(arrays):
        arrays["train_images"] = arrays["train_images"].reshape(60000, 784)

    corrupt_copy(tmp_path, monkeypatch, flatten)
    with pytest.raises(DataIntegrityError, match=r"'train_images' should be uint8 \(60000, 28, 28\)"):
        load_mnist()


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


def test_evaluation_pairs_are_reproducible_distinct_and_never_self_pairs():
    moving, fixed = evaluation_pairs(5, 5, n=500, seed=3)
    again = evaluation_pairs(5, 5, n=500, seed=3)
    assert moving.shape == fixed.shape == (500, 1, 28, 28)
    assert torch.equal(moving, again[0]) and torch.equal(fixed, again[1])
    assert not (moving == fixed).flatten(1).all(1).any()
    moving_index, fixed_index = evaluation_indices(5, 5, n=500, seed=3)
    assert len(set(moving_index.tolist())) == 500, "each pair has a moving image of its own"
    assert (moving_index != fixed_index).all()
    heldout = load_digits(5, "heldout")
    assert torch.equal(moving, heldout[moving_index]) and torch.equal(fixed, heldout[fixed_index])
    every_seven = evaluation_indices(7, 5, n=1028)[0]
    assert sorted(every_seven.tolist()) == list(range(1028))
    with pytest.raises(ValueError, match="n must be a positive int"):
        evaluation_pairs(5, 5, n=0)
    with pytest.raises(ValueError, match=r"n = 893 pairs need 893 distinct moving 5s, but the 'heldout' split holds 892"):
        evaluation_pairs(5, 7, n=893)


def test_evaluation_pairs_from_the_first_images_of_a_split():
    moving_index, fixed_index = evaluation_indices(5, 5, n=256, split="train", first=300)
    assert moving_index.max() < 300 and fixed_index.max() < 300 and len(moving_index.unique()) == 256
    moving, fixed = evaluation_pairs(5, 5, n=256, split="train", first=300)
    assert torch.equal(moving, load_digits(5, "train")[moving_index])
    with pytest.raises(ValueError, match=r"but the first 300 images of the 'train' split holds 300"):
        evaluation_pairs(5, 5, n=301, split="train", first=300)
    with pytest.raises(ValueError, match="first must be None or an int >= 2"):
        evaluation_indices(5, 5, first=0)


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
