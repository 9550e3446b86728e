"""One setting switches the collection to the full MNIST: $HELPERS_DATA_SOURCE=mnist.

It is read in one place (helpers.data.default_source) and followed by every loader, by
TrainConfig and by load_ensemble, which then looks for networks trained on that data in your own
folder (written there by scripts/train_checkpoints.py), never in the shipped one. Checked here
on a tiny fake MNIST the test writes in torchvision's layout.
"""

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.data import default_source, load_digits
from helpers.train import CheckpointError, TrainConfig, checkpoint_path, ensemble_path, load_checkpoint, load_ensemble, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path, array, magic):
    path.write_bytes(struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes())


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A full-MNIST stand-in with twenty 5s and twenty 7s for training, ten of each for testing,
    selected by the environment exactly as a reader would."""
    generator = np.random.default_rng(0)
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 20), ("t10k", 10)):
        labels = np.array([5, 7] * count, np.uint8)
        images = (generator.random((len(labels), 28, 28)) ** 4 * 255).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, magic=2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, magic=2049)
    monkeypatch.setenv("HELPERS_MNIST_ROOT", str(tmp_path / "mnist"))
    monkeypatch.setenv("HELPERS_DATA_SOURCE", "mnist")
    monkeypatch.setenv("HELPERS_CHECKPOINTS", str(tmp_path / "checkpoints"))   # this test's own folder
    return tmp_path


def test_the_default_source_is_the_bundled_data_unless_the_variable_says_otherwise(monkeypatch):
    monkeypatch.delenv("HELPERS_DATA_SOURCE", raising=False)
    assert default_source() == "bundled" and TrainConfig().source == "bundled"
    assert ensemble_path("fives") == checkpoint_path("fives")
    monkeypatch.setenv("HELPERS_DATA_SOURCE", "full")
    with pytest.raises(ValueError, match=r"\$HELPERS_DATA_SOURCE is 'full'; expected one of \('bundled', 'mnist'\)"):
        load_digits(5)
    with pytest.raises(ValueError, match="TrainConfig.source must be one of"):
        TrainConfig(source="full")


def test_with_the_variable_set_loaders_and_configs_use_the_full_mnist(fake_mnist):
    assert default_source() == "mnist"
    assert len(load_digits(5, "train")) == 18 and len(load_digits(7, "heldout")) == 10   # 20 − 20 // 10; the test set
    assert torch.equal(load_digits(5, "heldout"), load_digits(5, "heldout", source="mnist"))
    assert not torch.equal(load_digits(5, "heldout")[:1], load_digits(5, "heldout", source="bundled")[:1])
    assert TrainConfig(digit=5).source == "mnist"
    path = ensemble_path("fives")
    assert path.name == "fives_mnist.pt" and path.parent == Path(os.environ["HELPERS_CHECKPOINTS"])
    with pytest.raises(FileNotFoundError, match=r"no networks of 'fives' trained on the 'mnist' data yet.*train_checkpoints.py"):
        load_ensemble("fives")


def test_the_script_trains_on_the_full_mnist_into_your_folder_and_load_ensemble_finds_it(fake_mnist):
    shipped = checkpoint_path("fives_single_step")
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_checkpoints.py"), "fives_single_step"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before, "the shipped network is untouched"
    (member,) = load_ensemble("fives_single_step", seeds=(0,))
    assert member.config.source == "mnist" and member.config.registration_steps == 1
    assert ensemble_path("fives_single_step").exists()


def test_a_network_trained_on_other_data_is_refused(fake_mnist):
    bundled = load_checkpoint(checkpoint_path("fives_single_step"))
    save_checkpoint(ensemble_path("fives_single_step"), bundled)
    with pytest.raises(CheckpointError, match=r"trained on \['bundled'\] data, but the data source is 'mnist'"):
        load_ensemble("fives_single_step", seeds=(0,))
