"""train() trains exactly the network it is given: helpers.engine.fused only where it provably
computes what the modules compute, the modules everywhere else, and it says which."""

import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F

from helpers import fused, sampler
from helpers.analysis import count_calls
from helpers.data import load_digits, random_pairs
from helpers.losses import DiffusionRegularizedNet, ssd
from helpers.models import FCNet, inner_fcnet, multistep, post_network
from helpers.registration import FunctionFromVectorField
from helpers.train import TrainConfig, build_network, train

pytestmark = pytest.mark.skipif(sampler.compiled_kernel() is None, reason="the fused path needs the compiled sampler")

CONFIG = TrainConfig(steps=4, batch_size=8, seed=2)


@pytest.fixture(scope="module")
def fives():
    return load_digits(5, "train")[:40]


def tanh_forward(self, moving, fixed):  # the post's FCNet with tanh in place of ReLU
    x = torch.cat([moving, fixed], 1).reshape(-1, 2 * self.size * self.size)
    x = torch.tanh(self.dense1(x))
    x = torch.tanh(self.dense2(x))
    return self.dense3(x).reshape(-1, 2, self.size, self.size)


def still_forward(self, moving, fixed, original=FCNet.forward):  # no displacement, whatever the weights
    return 0 * original(self, moving, fixed)


class TanhNet(FCNet):
    forward = tanh_forward


def network_around(fcnet, steps=CONFIG.registration_steps):
    net = DiffusionRegularizedNet(multistep(FunctionFromVectorField(fcnet), steps), ssd, lmbda=CONFIG.lmbda)
    net.assign_identity_map((1, 1, 28, 28))
    return net


def train_by_hand(net, images, config, loss_of):
    """train()'s loop (Adam, the same pairs, no clipping), with the loss `loss_of(net, moving, fixed)`:
    the all_loss history [steps] float64 and the trained net."""
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    pairs = torch.Generator().manual_seed(config.seed)
    history = []
    net.train()
    for _ in range(config.steps):
        moving, fixed = random_pairs(images, config.batch_size, pairs)
        loss = loss_of(net, moving, fixed)
        optimizer.zero_grad(set_to_none=True)
        loss.all_loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), math.inf)
        optimizer.step()
        history.append(loss.all_loss.item())
    return torch.tensor(history, dtype=torch.float64), net


def through_modules(net, moving, fixed):
    return net(moving, fixed)


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_the_post_network_trains_on_the_fused_path_bit_for_bit_as_before(fives, capsys):
    """The shipped checkpoints were trained through helpers.engine.fused directly: the checks that
    now come first must not change a bit of that training."""
    result = train(CONFIG, fives, device="cpu", progress=False)
    assert result.path == "fused"
    assert "helpers.engine.fused" in capsys.readouterr().err
    history, by_hand = train_by_hand(build_network(CONFIG), fives, CONFIG, fused.training_loss)
    assert torch.equal(result.history["all_loss"], history)
    assert_same_weights(inner_fcnet(result.net), inner_fcnet(by_hand))
    # ... and that is not what training through the modules gives, bit for bit.
    modules_history, _ = train_by_hand(build_network(CONFIG), fives, CONFIG, through_modules)
    assert not torch.equal(result.history["all_loss"], modules_history)
    torch.testing.assert_close(result.history["all_loss"], modules_history, rtol=1e-4, atol=0)


@pytest.mark.parametrize("edit", [tanh_forward, still_forward], ids=["tanh", "outputs zeros"])
def test_an_edited_forward_trains_the_edit(fives, monkeypatch, capsys, edit):
    plain = train(CONFIG, fives, device="cpu", progress=False)
    monkeypatch.setattr(FCNet, "forward", edit)
    capsys.readouterr()
    result = train(CONFIG, fives, device="cpu", progress=False)
    assert result.path == "modules"
    assert "FCNet.forward is not the function helpers.engine.fused was written from" in capsys.readouterr().err
    history, by_hand = train_by_hand(build_network(CONFIG), fives, CONFIG, through_modules)
    assert torch.equal(result.history["all_loss"], history)
    assert_same_weights(inner_fcnet(result.net), inner_fcnet(by_hand))
    assert (result.history["all_loss"][1:] - plain.history["all_loss"][1:]).abs().min() > 1e-4
    if edit is still_forward:  # nothing moves, so the loss is the unregistered pairs' every step
        generator = torch.Generator().manual_seed(CONFIG.seed)
        batches = [random_pairs(fives, CONFIG.batch_size, generator) for _ in range(CONFIG.steps)]
        unmoved = torch.tensor([2 * ((moving - fixed) ** 2).mean().item() for moving, fixed in batches])
        torch.testing.assert_close(result.history["all_loss"], unmoved.double(), rtol=1e-6, atol=0)


def test_a_forward_that_ignores_the_weights_is_a_clear_error(fives, monkeypatch):
    monkeypatch.setattr(FCNet, "forward", lambda self, moving, fixed: torch.zeros(len(moving), 2, 28, 28))
    with pytest.raises(ValueError, match="does not depend on the network's parameters"):
        train(CONFIG, fives, device="cpu", progress=False)


def test_a_subclass_of_fcnet_trains_the_subclass(fives, capsys):
    torch.manual_seed(0)
    net = network_around(TanhNet())
    twin = copy.deepcopy(net)
    result = train(CONFIG, fives, device="cpu", progress=False, net=net)
    assert result.path == "modules" and result.net is net
    assert "not the post's configuration" in capsys.readouterr().err
    history, by_hand = train_by_hand(twin, fives, CONFIG, through_modules)
    assert torch.equal(result.history["all_loss"], history)
    assert_same_weights(result.net, by_hand)


def test_a_given_post_network_takes_the_fused_path(fives):
    torch.manual_seed(0)
    net = post_network()
    twin = copy.deepcopy(net)
    result = train(CONFIG, fives, device="cpu", progress=False, net=net)
    assert result.path == "fused"
    history, _ = train_by_hand(twin, fives, CONFIG, fused.training_loss)
    assert torch.equal(result.history["all_loss"], history)


def test_hooks_fire_in_training_because_they_send_it_through_the_modules(fives, capsys):
    net = build_network(CONFIG)
    with count_calls(inner_fcnet(net)) as calls:
        result = train(CONFIG, fives, device="cpu", progress=False, net=net)
    assert result.path == "modules"
    assert calls[0] == CONFIG.steps * CONFIG.registration_steps
    assert "hooks are registered on a FCNet" in capsys.readouterr().err


def test_a_disagreement_on_the_first_batch_sends_training_through_the_modules(fives, monkeypatch, capsys):
    """The cross-check is the second guard: a fused node whose gradients are off by 1% is caught."""
    backward = fused._World.backward

    def off_by_one_percent(ctx, *grads):
        return tuple(None if g is None else 1.01 * g for g in backward(ctx, *grads))

    monkeypatch.setattr(fused._World, "backward", staticmethod(off_by_one_percent))
    result = train(CONFIG, fives, device="cpu", progress=False)
    assert result.path == "modules"
    assert "disagrees with the modules on the first batch: the gradient of" in capsys.readouterr().err


def test_the_cross_check_agrees_on_the_post_network_and_leaves_grad_alone():
    torch.manual_seed(0)
    net = post_network()
    torch.nn.init.normal_(inner_fcnet(net).dense3.weight, std=1e-3)  # some motion
    moving, fixed = random_pairs(load_digits(5, "train"), 16, torch.Generator().manual_seed(0))
    assert fused.cross_check(net, moving, fixed) is None
    assert all(p.grad is None for p in net.parameters())


def test_what_the_fused_path_refuses(monkeypatch):
    net = post_network()
    moving, fixed = random_pairs(load_digits(5, "train"), 4, torch.Generator().manual_seed(0))
    assert fused.why_not(net, moving, fixed) is None
    fcnet = inner_fcnet(net)

    fcnet.forward = types.MethodType(tanh_forward, fcnet)
    assert "FCNet.forward is replaced on the module itself" in fused.edited(net)
    del fcnet.forward
    assert fused.edited(net) is None

    with monkeypatch.context() as patch:
        patch.setattr(F, "relu", torch.tanh)
        assert "relu is not the function" in fused.edited(net)
    with monkeypatch.context() as patch:
        patch.setattr(FunctionFromVectorField, "steps", lambda self, moving, fixed: iter(()))
        assert "FunctionFromVectorField.steps" in fused.edited(net)

    linear = fcnet.dense2
    fcnet.dense2 = torch.nn.Sequential(linear)
    assert "plain nn.Linear" in fused.edited(net)
    fcnet.dense2 = linear

    handle = fcnet.dense1.register_forward_pre_hook(lambda module, inputs: None)
    assert "hooks are registered on a Linear" in fused.edited(net)
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, inputs, output: None)
    try:
        assert "global module hooks" in fused.edited(net)
    finally:
        handle.remove()
    assert fused.why_not(net, moving, fixed) is None
    with torch.no_grad():
        assert fused.why_not(net, moving, fixed) == "gradients are off"
