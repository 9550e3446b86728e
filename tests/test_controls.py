"""Controls for the drift: pairs with nothing to align, and a field applied again and again."""

import pytest
import torch

from helpers.controls import control_pairs, repeat_field
from helpers.data import load_digits


@pytest.fixture(scope="module")
def sevens():
    return load_digits(7, "heldout")[:6]


def test_control_pairs(sevens):
    moving, fixed = control_pairs(sevens, "identity")
    assert torch.equal(moving, sevens) and torch.equal(fixed, sevens) and fixed is not sevens
    assert torch.equal(control_pairs(sevens, "blank")[1], torch.zeros_like(sevens))
    noise = control_pairs(sevens, "noise", seed=3)[1]
    assert noise.shape == sevens.shape and 0 <= noise.min() and noise.max() <= 1
    assert torch.equal(noise, control_pairs(sevens, "noise", seed=3)[1])
    assert not torch.equal(noise, control_pairs(sevens, "noise", seed=4)[1])
    assert not torch.equal(noise[0], noise[1]), "each image has its own noise"
    with pytest.raises(ValueError, match="kind must be one of"):
        control_pairs(sevens, "zeros")
    with pytest.raises(ValueError, match="rank 4"):
        control_pairs(sevens[0], "blank")


def test_a_zero_field_changes_nothing(sevens):
    stages = repeat_field(sevens, torch.zeros(2, 28, 28), 3)
    assert stages.shape == (4, 6, 1, 28, 28)
    assert all(torch.allclose(stage, sevens, atol=1e-6) for stage in stages)


def test_a_one_pixel_shift_applied_three_times_moves_three_pixels(sevens):
    field = torch.zeros(2, 28, 28)
    field[1] = 1 / 27  # sample one pixel to the right: the image moves one pixel left
    stages = repeat_field(sevens, field, 3)
    for k in range(1, 4):
        assert torch.allclose(stages[k][..., : 28 - k], sevens[..., k:], atol=1e-5), f"stage {k}"


def test_one_field_per_image_and_bad_fields(sevens):
    fields = torch.zeros(6, 2, 28, 28)
    fields[0, 0] = 2 / 27
    stages = repeat_field(sevens, fields, 1)
    assert torch.allclose(stages[1][1:], sevens[1:], atol=1e-6) and not torch.allclose(stages[1][0], sevens[0])
    with pytest.raises(ValueError, match="field must be"):
        repeat_field(sevens, torch.zeros(5, 2, 28, 28), 1)
    with pytest.raises(ValueError, match="field must be"):
        repeat_field(sevens, torch.zeros(1, 28, 28), 1)
    with pytest.raises(ValueError, match="times must be"):
        repeat_field(sevens, torch.zeros(2, 28, 28), 0)
