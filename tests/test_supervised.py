"""The supervised (Quicksilver-style) paradigm: targets from the per-pair optimiser, and a
network trained to reproduce them."""

import dataclasses

import pytest
import torch

from helpers.coordinates import identity_map
from helpers.data import load_digits
from helpers.supervised import TargetBank, field_loss, target_bank, train_supervised
from helpers.train import TrainConfig, build_network, load_checkpoint, save_checkpoint, train

SUPERVISED = TrainConfig(digit=5, paradigm="supervised", steps=30, batch_size=8, registration_steps=1, seed=1)


@pytest.fixture(scope="module")
def bank():
    return target_bank(SUPERVISED, pairs=12, iterations=40)


def test_targets_are_the_optimisers_fields_and_better_than_no_registration(bank):
    assert bank.moving.shape == bank.fixed.shape == (12, 1, 28, 28) and bank.displacement.shape == (12, 2, 28, 28)
    unregistered = 2 * (bank.moving - bank.fixed).pow(2).flatten(1).mean(1)
    assert (bank.outer_loss < unregistered).float().mean() > 0.9, "the optimiser lowers nearly every pair's loss"
    assert bank.displacement.abs().max() > 0, "the fields moved"
    again = target_bank(SUPERVISED, pairs=12, iterations=40)
    assert torch.equal(again.displacement, bank.displacement), "the targets are deterministic"
    images = load_digits(5, "train")
    assert all(any(torch.equal(m, image) for image in images) for m in bank.moving[:3]), "pairs of training images"


def test_the_network_learns_to_output_a_known_field():
    """Targets that are one constant shift: the trained one-step network must output about that shift."""
    images = load_digits(5, "train")[:16]
    shift = torch.zeros(16, 2, 28, 28)
    shift[:, 0] = 1.5 / 27  # 1.5 pixels down
    bank = TargetBank(images, images.flip(0), shift, torch.zeros(16), 0.0)
    config = dataclasses.replace(SUPERVISED, steps=300, batch_size=16, lr=3e-3)
    result = train_supervised(config, bank, progress=False)
    assert result.history["field_loss"][-20:].mean() < 0.1 * result.history["field_loss"][0]
    with torch.no_grad():
        loss, registration = field_loss(result.net, images, images.flip(0), shift)
    output = registration.phi_AB_vectorfield - identity_map(images.shape)
    assert loss < 0.15 * (1.5 / 27) and (output[:, 0].mean() - 1.5 / 27).abs() < 0.1 * 1.5 / 27


def test_training_is_deterministic_and_trains_the_configs_network(bank):
    first = train_supervised(SUPERVISED, bank, progress=False)
    second = train_supervised(SUPERVISED, bank, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.net.state_dict().values(), second.net.state_dict().values()))
    assert first.path == "supervised" and set(first.history) >= {"field_loss", "all_loss", "grad_norm", "skipped"}
    assert len(first.history["field_loss"]) == SUPERVISED.steps
    fresh = build_network(SUPERVISED)
    assert fresh.regis_net.image_shape == first.net.regis_net.image_shape
    nine = train_supervised(dataclasses.replace(SUPERVISED, registration_steps=9, steps=3), bank, progress=False)
    assert sum(1 for _ in nine.net.regis_net.steps(bank.moving[:1], bank.fixed[:1])) == 9


def test_checkpoints_keep_the_paradigm(bank, tmp_path):
    result = train_supervised(dataclasses.replace(SUPERVISED, steps=3), bank, progress=False)
    save_checkpoint(tmp_path / "imitator.pt", result)
    loaded = load_checkpoint(tmp_path / "imitator.pt")
    assert loaded.config.paradigm == "supervised" and loaded.config == result.config
    payload = torch.load(tmp_path / "imitator.pt", weights_only=True)
    del payload["config"]["paradigm"]  # a checkpoint from before the field existed
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").config.paradigm == "unsupervised"


def test_each_paradigm_has_its_own_trainer(bank):
    with pytest.raises(ValueError, match="helpers.supervised.train_supervised"):
        train(SUPERVISED, progress=False)
    with pytest.raises(ValueError, match="paradigm='supervised'"):
        train_supervised(dataclasses.replace(SUPERVISED, paradigm="unsupervised"), bank, progress=False)
    with pytest.raises(ValueError, match="TargetBank"):
        train_supervised(SUPERVISED, (bank.moving, bank.fixed), progress=False)
    with pytest.raises(ValueError, match="target fields must be"):
        field_loss(build_network(SUPERVISED), bank.moving, bank.fixed, bank.displacement[:, :1])
