"""Training: determinism, history, progress bar, and checkpoints that refuse to be misread."""

import dataclasses

import pytest
import torch

import helpers.train
from helpers.data import load_digits
from helpers.losses import BendingLoss
from helpers.models import FCNet, inner_fcnet, post_network
from helpers.registration import FunctionFromVectorField
from helpers.train import (
    CHECKPOINTS, ENSEMBLE_SEEDS, CheckpointError, TrainConfig, TrainingDiverged, checkpoint_path, is_spike, load_checkpoint,
    load_ensemble, member_name, my_checkpoint_path, save_checkpoint, train, training_images,
)

SMALL = TrainConfig(steps=4, batch_size=8, seed=3)


@pytest.fixture(scope="module")
def fives():
    return load_digits(5, "train")[:40]


@pytest.fixture(scope="module")
def small_run(fives):
    return train(SMALL, fives, device="cpu", progress=False)


def weights(result):
    return inner_fcnet(result.net).state_dict()


def test_history_has_every_loss_field_per_step(small_run):
    assert list(small_run.history) == list(BendingLoss._fields) + ["grad_norm", "skipped"]
    for name, values in small_run.history.items():
        assert values.shape == (SMALL.steps,) and torch.isfinite(values).all(), name
    # The first step starts from the identity: no deformation yet.
    assert small_run.history["bending_energy_loss"][0] == 0
    assert small_run.history["all_loss"][0] == small_run.history["similarity_loss"][0] > 0


def test_training_is_deterministic(fives, small_run):
    again = train(SMALL, fives, device="cpu", progress=False)
    for name, tensor in weights(small_run).items():
        assert torch.equal(tensor, weights(again)[name]), name
    for name, values in small_run.history.items():
        assert torch.equal(values, again.history[name]), name


def test_another_seed_trains_another_network(fives, small_run):
    other = train(dataclasses.replace(SMALL, seed=4), fives, device="cpu", progress=False)
    assert not torch.equal(weights(small_run)["dense1.weight"], weights(other)["dense1.weight"])


def test_training_lowers_the_loss(fives):
    result = train(TrainConfig(steps=60, batch_size=32, seed=0), fives, device="cpu", progress=False)
    loss = result.history["all_loss"]
    assert loss[-10:].mean() < 0.7 * loss[:10].mean()
    assert not result.net.training


def test_stop_ends_training_early_with_the_history_so_far(fives, small_run):
    seen = []

    def stop(step, net):
        seen.append(step)
        return step == 1

    result = train(SMALL, fives, device="cpu", progress=False, stop=stop)
    assert seen == [0, 1]
    assert all(len(values) == 2 for values in result.history.values())
    # Steps 0 and 1 are the ones the full run took.
    torch.testing.assert_close(result.history["all_loss"], small_run.history["all_loss"][:2], rtol=0, atol=0)
    assert not result.net.training


def test_progress_bar_is_shown(fives, capsys):
    train(dataclasses.replace(SMALL, steps=2), fives, device="cpu", progress=True)
    assert "training on 5s" in capsys.readouterr().err


def test_grad_clip_caps_the_gradient_before_adam(fives, monkeypatch):
    seen = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append(torch.cat([p.grad.flatten() for group in self.param_groups for p in group["params"]]).norm())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    result = train(dataclasses.replace(SMALL, grad_clip=0.01), fives, device="cpu", progress=False)
    assert (result.history["grad_norm"] > 0.01).all()  # recorded before clipping
    assert all(norm <= 0.01 * (1 + 1e-5) for norm in seen)


def test_the_linear_schedule_lowers_the_learning_rate_step_by_step(fives, monkeypatch):
    used = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    train(dataclasses.replace(SMALL, lr=2e-3, lr_schedule="linear"), fives, device="cpu", progress=False)
    assert used == pytest.approx([2e-3, 1.5e-3, 1e-3, 0.5e-3])
    used.clear()
    train(SMALL, fives, device="cpu", progress=False)
    assert used == [1e-3] * 4
    used.clear()
    train(dataclasses.replace(SMALL, steps=6, decay_after=3), fives, device="cpu", progress=False)
    assert used == pytest.approx([1e-3] * 4 + [0.75e-3, 0.6e-3])  # lr · 3/s past step 3
    used.clear()
    train(dataclasses.replace(SMALL, steps=6, decay_after=3, lr_schedule="linear"), fives, device="cpu", progress=False)
    assert used == pytest.approx([1e-3 * (1 - s / 6) * min(1, 3 / max(s, 1)) for s in range(6)])


def test_runs_no_longer_than_decay_after_are_the_posts_constant_rate_bit_for_bit(fives, small_run):
    assert TrainConfig().decay_after == TrainConfig().steps, "the post's 800 steps are untouched by the decay"
    constant = train(dataclasses.replace(SMALL, decay_after=None), fives, device="cpu", progress=False)
    for name, tensor in weights(small_run).items():  # SMALL: 4 steps, decay after 800
        assert torch.equal(tensor, weights(constant)[name]), name
    decayed = train(dataclasses.replace(SMALL, decay_after=1), fives, device="cpu", progress=False)
    assert not torch.equal(weights(decayed)["dense3.weight"], weights(constant)["dense3.weight"])


def test_checkpoints_written_before_decay_after_existed_load_with_its_default(small_run, tmp_path):
    path = tmp_path / "old.pt"
    save_checkpoint(path, small_run)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["decay_after"]
    torch.save(payload, path)
    assert load_checkpoint(path).config == small_run.config


def test_augmenting_changes_what_the_network_sees_and_stays_deterministic(fives, small_run, monkeypatch):
    seen = []
    loss = helpers.train.training_loss

    def recording_loss(net, moving, fixed):
        seen.append(moving.clone())
        return loss(net, moving, fixed)

    monkeypatch.setattr(helpers.train, "training_loss", recording_loss)
    augmented = dataclasses.replace(SMALL, augment=1.0)
    first, again = (train(augmented, fives, device="cpu", progress=False) for _ in range(2))
    plain_images = set(map(bytes, fives.flatten(1).numpy()))
    assert all(bytes(image.flatten().numpy()) not in plain_images for image in seen[0])  # all altered
    assert all(torch.equal(a, b) for a, b in zip(weights(first).values(), weights(again).values()))
    assert not torch.equal(weights(first)["dense1.weight"], weights(small_run)["dense1.weight"])


def test_spike_detection():
    calm = torch.full((50,), 0.3, dtype=torch.float64)
    assert is_spike(1.0, calm, 3.0) and not is_spike(0.8, calm, 3.0)
    assert not is_spike(100.0, calm[:19], 3.0)  # too little history to judge


def test_spike_guard_skips_the_update(fives):
    """A guard so strict that every step after the first 20 counts as a spike freezes the weights."""
    strict = dataclasses.replace(SMALL, steps=24, spike_guard=1e-6)
    frozen = train(strict, fives, device="cpu", progress=False)
    assert frozen.history["skipped"].tolist() == [0.0] * 20 + [1.0] * 4
    first_20 = train(dataclasses.replace(strict, steps=20), fives, device="cpu", progress=False)
    for name, tensor in weights(first_20).items():
        assert torch.equal(tensor, weights(frozen)[name]), name
    unguarded = train(dataclasses.replace(strict, spike_guard=None), fives, device="cpu", progress=False)
    assert not unguarded.history["skipped"].any()
    assert not torch.equal(weights(unguarded)["dense1.weight"], weights(frozen)["dense1.weight"])


def test_checkpoint_round_trip(small_run, tmp_path, fives):
    path = tmp_path / "run.pt"
    save_checkpoint(path, small_run)
    loaded = load_checkpoint(path)
    assert loaded.config == small_run.config
    for name, tensor in weights(small_run).items():
        assert torch.equal(tensor, weights(loaded)[name]), name
    for name, values in small_run.history.items():
        assert torch.equal(values, loaded.history[name]), name
    moving, fixed = fives[:4], fives[4:8]
    with torch.no_grad():
        assert torch.equal(small_run.net(moving, fixed).all_loss, loaded.net(moving, fixed).all_loss)


def test_shipped_checkpoints_are_read_from_the_package_and_never_overwritten(small_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HELPERS_CHECKPOINTS", "/somewhere/else")
    assert checkpoint_path("fives") == CHECKPOINTS / "fives.pt" and checkpoint_path("fives").is_file()
    # The refusals are tried on a copy of the shipped folder: were they broken, this test must not
    # overwrite the real one.
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "fives.pt").write_bytes(checkpoint_path("fives").read_bytes())
    monkeypatch.setattr(helpers.train, "CHECKPOINTS", shipped)
    before = checkpoint_path("fives").read_bytes()
    with pytest.raises(ValueError, match=r"shipped folder.*my_checkpoint_path\('fives'\)"):
        save_checkpoint(checkpoint_path("fives"), small_run)
    for elsewhere in (shipped / "a_new_name.pt", shipped / "below" / "it.pt", tmp_path / "shipped" / ".." / "shipped" / "x.pt"):
        with pytest.raises(ValueError, match="shipped folder"):
            save_checkpoint(elsewhere, small_run)
    assert checkpoint_path("fives").read_bytes() == before and sorted(shipped.iterdir()) == [shipped / "fives.pt"]
    save_checkpoint(shipped / "by_the_script.pt", small_run, shipped=True)
    assert load_checkpoint(shipped / "by_the_script.pt").config == small_run.config
    with pytest.raises(ValueError, match="plain words"):
        checkpoint_path("../fives")


def test_only_the_network_a_config_describes_can_be_saved(small_run, tmp_path):
    other_lambda = small_run._replace(net=post_network(lmbda=0.2))
    with pytest.raises(ValueError, match=r"9 steps with λ = 0.2.*state_dict"):
        save_checkpoint(tmp_path / "a.pt", other_lambda)
    class Subclassed(FCNet):
        pass

    subclassed = post_network()
    inner = next(module for module in subclassed.modules() if isinstance(module, FunctionFromVectorField))
    inner.net = Subclassed(size=28)
    with pytest.raises(ValueError, match="another kind of network"):
        save_checkpoint(tmp_path / "b.pt", small_run._replace(net=subclassed))
    huge = post_network()
    with torch.no_grad():
        inner_fcnet(huge).dense3.bias[0] = 1e6
    with pytest.raises(ValueError, match=r"\['dense3.bias'\] are not finite in float16"):
        save_checkpoint(tmp_path / "c.pt", small_run._replace(net=huge), weights="float16")
    assert not list(tmp_path.iterdir())


def test_your_own_checkpoints_go_elsewhere(small_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HELPERS_CHECKPOINTS", str(tmp_path))
    assert my_checkpoint_path("fives") == tmp_path / "fives.pt"
    save_checkpoint(my_checkpoint_path("fives"), small_run)
    assert load_checkpoint(tmp_path / "fives.pt").config == small_run.config
    monkeypatch.delenv("HELPERS_CHECKPOINTS")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert my_checkpoint_path("mine") == tmp_path / "runs" / "checkpoints" / "mine.pt"
    with pytest.raises(ValueError, match="plain words"):
        my_checkpoint_path("../../etc")
    monkeypatch.setenv("HELPERS_CHECKPOINTS", "")
    with pytest.raises(ValueError, match="HELPERS_CHECKPOINTS is set but empty"):
        my_checkpoint_path("mine")


def test_half_precision_checkpoints(small_run, tmp_path):
    path = tmp_path / "half.pt"
    save_checkpoint(path, small_run, weights="float16")
    loaded = load_checkpoint(path)
    for name, tensor in weights(small_run).items():
        assert weights(loaded)[name].dtype == torch.float32
        assert torch.equal(weights(loaded)[name], tensor.half().float()), name
    full = tmp_path / "full.pt"
    save_checkpoint(full, small_run)
    assert path.stat().st_size < 0.6 * full.stat().st_size
    with pytest.raises(ValueError, match="weights must be one of"):
        save_checkpoint(path, small_run, weights="int8")
    rewrite(path, weights="float32")  # the file's word and its tensors disagree
    with pytest.raises(CheckpointError, match="not all 'float32' tensors"):
        load_checkpoint(path)


def test_member_names_and_ensembles():
    assert member_name("fives", 0) == "fives" and member_name("fives", 3) == "fives_seed_3"
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        member_name("fives", -1)
    ensemble = load_ensemble("fives")
    assert [member.config.seed for member in ensemble] == list(ENSEMBLE_SEEDS)
    assert len({dataclasses.replace(member.config, seed=0) for member in ensemble}) == 1
    first = [weights(member)["dense3.bias"] for member in ensemble]
    assert all(not torch.equal(first[0], other) for other in first[1:]), "the seeds trained different networks"
    assert [member.config.seed for member in load_ensemble("fives", iter((2, 1)))] == [2, 1]
    for seeds in ((), (0, 0, 1)):
        with pytest.raises(ValueError, match="at least one seed and no seed twice"):
            load_ensemble("fives", seeds)


def test_corrupt_checkpoint(small_run, tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, small_run)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def rewrite(path, **changes):
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "something-else"}, "is not a 'helpers-registration-checkpoint' file"),
        ({"format_version": 99}, "format version 99; this helpers reads version 1"),
        ({"config": {"digit": 5, "learning_rate": 0.1}}, "invalid config"),
        ({"config": {"digit": 5, "lr": -1.0}}, "invalid config.*lr must be"),
        ({"fcnet": {"dense1.weight": torch.zeros(3, 3)}}, "weights do not fit"),
        ({"fcnet": [torch.zeros(3)]}, "weights are not all 'float32' tensors"),
        ({"weights": ["float32"]}, "weights are not all"),
    ],
)
def test_mismatched_checkpoint(small_run, tmp_path, changes, message):
    path = tmp_path / "run.pt"
    save_checkpoint(path, small_run)
    rewrite(path, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_weights_for_another_architecture(small_run, tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, small_run)
    payload = torch.load(path, weights_only=True)
    payload["fcnet"]["dense2.weight"] = torch.zeros(60, 50)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="size mismatch"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "changes",
    [{"steps": -1}, {"steps": 0}, {"batch_size": 0}, {"lr": 0.0}, {"lr": float("nan")}, {"grad_clip": 0.0}, {"spike_guard": -1.0}, {"digit": 5.0},
     {"lr_schedule": "cosine"}, {"augment": -1.0}, {"augment": float("inf")}, {"augment": True},
     {"decay_after": 0}, {"decay_after": True}, {"decay_after": 2.5}, {"paradigm": "reinforced"},
     {"train_size": 1}, {"train_size": 300.0}, {"train_size": True}],
)
def test_bad_config(changes):
    with pytest.raises(ValueError, match="TrainConfig"):
        TrainConfig(**changes)


def test_divergence_stops_with_the_history_so_far(fives, monkeypatch):
    """Weights that turn to NaN end training with a clear error, not a crash in the sampler."""
    adam_step = torch.optim.Adam.step

    def step_then_poison(self, *args, **kwargs):
        result = adam_step(self, *args, **kwargs)
        if self.state[self.param_groups[0]["params"][0]]["step"] == 3:
            self.param_groups[0]["params"][-1].data.fill_(float("nan"))  # dense3.bias
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_poison)
    with pytest.raises(TrainingDiverged, match="diverged at step 3.*NaN or inf displacements") as caught:
        train(dataclasses.replace(SMALL, steps=6), fives, device="cpu", progress=False)
    assert caught.value.history["all_loss"].shape == (3,)
    assert torch.isfinite(caught.value.history["all_loss"]).all()


def test_spike_guard_skips_non_finite_gradients(fives, monkeypatch):
    clip = torch.nn.utils.clip_grad_norm_
    calls = [0]

    def clip_reporting_inf_once(parameters, max_norm):
        calls[0] += 1
        norm = clip(parameters, max_norm)
        return torch.tensor(float("inf")) if calls[0] == 3 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_reporting_inf_once)
    result = train(dataclasses.replace(SMALL, steps=5), fives, device="cpu", progress=False)
    assert result.history["skipped"].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_train_size_trains_on_the_first_images_of_the_split_only(monkeypatch):
    config = TrainConfig(steps=2, batch_size=4, train_size=30)
    assert torch.equal(training_images(config), load_digits(5, "train")[:30])
    assert len(training_images(TrainConfig())) == len(load_digits(5, "train")) == 4879
    drawn = []
    real_random_pairs = helpers.train.random_pairs

    def spy(images, batch_size, generator):
        drawn.append(len(images))
        return real_random_pairs(images, batch_size, generator)

    monkeypatch.setattr(helpers.train, "random_pairs", spy)
    train(config, progress=False)
    assert drawn == [30, 30], "every batch is drawn from the first 30 images"
    with pytest.raises(ValueError, match="train_size is 5000, but the 'train' split holds 4879 5s"):
        training_images(TrainConfig(train_size=5000))
