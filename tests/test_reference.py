"""helpers against icon_registration 1.1.9, on the post's exact configuration.

tests/data/icon_fcnet8_oracle.npz holds what icon_registration computed with fixed
weights and inputs (see icon_fcnet8_oracle.README.md beside it). Everything here must
agree to float32 tolerance: 1e-5 relative to the reference's magnitude.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import helpers as icon
from helpers import fused, sampler
from helpers.models import FCNet

REFERENCE = Path(__file__).parent / "data" / "icon_fcnet8_oracle.npz"
RTOL = 1e-5


@pytest.fixture(scope="module")
def ref():
    with np.load(REFERENCE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def tensor(ref, key):
    return torch.from_numpy(ref[key])


def assert_matches(actual, expected, what):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    scale = max(expected.abs().max().item(), 1e-12)
    torch.testing.assert_close(actual.detach(), expected, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}")


def build_post_network(ref):
    """The post's code, verbatim but for the import, with the reference's weights."""
    fcnet = FCNet(size=28)
    fcnet.load_state_dict({key[len("fcnet.") :]: tensor(ref, key) for key in ref if key.startswith("fcnet.")})
    inner_net = icon.FunctionFromVectorField(fcnet)
    n2 = inner_net
    for _ in range(8):
        n2 = icon.TwoStepRegistration(n2, inner_net)
    net = icon.losses.DiffusionRegularizedNet(n2, icon.ssd, lmbda=float(ref["lmbda"]))
    net.assign_identity_map(ref["image_A"].shape)
    net.train()
    return net, fcnet


@pytest.fixture(scope="module")
def run(ref):
    """One forward and backward pass, recording what the inner network saw and returned."""
    net, fcnet = build_post_network(ref)
    calls = []
    hook = fcnet.register_forward_hook(lambda module, inputs, output: calls.append((*inputs, output)))
    loss = net(tensor(ref, "image_A"), tensor(ref, "image_B"))
    hook.remove()
    loss.all_loss.backward()
    return net, fcnet, loss, calls


def test_identity_map_and_spacing(ref, run):
    net = run[0]
    assert torch.equal(net.identity_map, tensor(ref, "identity_map"))
    np.testing.assert_allclose(net.spacing.numpy(), ref["spacing"], rtol=1e-12)


@pytest.mark.parametrize("field", ["all_loss", "bending_energy_loss", "similarity_loss", "transform_magnitude", "flips"])
def test_loss_fields(ref, run, field):
    loss = run[2]
    assert list(loss._fields) == list(ref["loss_field_names"])
    assert_matches(getattr(loss, field), ref[f"loss.{field}"], field)


@pytest.mark.parametrize("key", ["phi_AB_vectorfield", "warped_image_A"])
def test_final_transform_and_warped_image(ref, run, key):
    assert_matches(getattr(run[0], key), ref[key], key)


def test_nine_inner_calls_see_and_return_what_icon_did(ref, run):
    calls = run[3]
    assert len(calls) == int(ref["n_inner_calls_per_forward"]) == 9
    for k, (moving, fixed, displacement) in enumerate(calls):
        assert_matches(moving, ref["step_input_x"][k], f"input x of call {k}")
        assert_matches(fixed, ref["step_input_y"][k], f"input y of call {k}")
        assert_matches(displacement, ref["step_displacement"][k], f"displacement of call {k}")


@pytest.mark.parametrize("name", ["dense1.weight", "dense1.bias", "dense2.weight", "dense2.bias", "dense3.weight", "dense3.bias"])
def test_parameter_gradients(ref, run, name):
    fcnet = run[1]
    assert_matches(dict(fcnet.named_parameters())[name].grad, ref[f"grad.fcnet.{name}"], f"gradient of {name}")


@pytest.fixture(scope="module")
def training_run(ref):
    """The same pass as `helpers.train` takes it: `fused.training_loss` (one hand-written
    autograd node where the compiled sampler serves, the modules elsewhere)."""
    net, fcnet = build_post_network(ref)
    image_A, image_B = tensor(ref, "image_A"), tensor(ref, "image_B")
    took_fused = fused.applies(net, image_A, image_B)
    loss = fused.training_loss(net, image_A, image_B)
    loss.all_loss.backward()
    return took_fused, fcnet, loss


def test_training_takes_the_fused_path_with_the_compiled_sampler(ref, training_run):
    assert training_run[0] == (sampler.active(tensor(ref, "image_A")) == "compiled")


@pytest.mark.parametrize("field", ["all_loss", "bending_energy_loss", "similarity_loss", "transform_magnitude", "flips"])
def test_training_loss_fields(ref, training_run, field):
    assert_matches(getattr(training_run[2], field), ref[f"loss.{field}"], f"training path: {field}")


@pytest.mark.parametrize("name", ["dense1.weight", "dense1.bias", "dense2.weight", "dense2.bias", "dense3.weight", "dense3.bias"])
def test_training_parameter_gradients(ref, training_run, name):
    fcnet = training_run[1]
    assert_matches(dict(fcnet.named_parameters())[name].grad, ref[f"grad.fcnet.{name}"], f"training path: gradient of {name}")


def test_interpolation_count_matches_icon_at_batch_4(ref, monkeypatch):
    net, _ = build_post_network(ref)
    count = [0]
    grid_sample = torch.nn.functional.grid_sample

    def counting(*args, **kwargs):
        count[0] += 1
        return grid_sample(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grid_sample", counting)
    with torch.no_grad(), sampler.using("reference"):
        net(tensor(ref, "image_A"), tensor(ref, "image_B"))
    assert count[0] == int(ref["n_grid_sample_per_forward_batch4"]) == 54


def test_step_trace_shares_the_forward_pass(ref, run):
    """The per-step view reproduces every inner input and the loss's final numbers."""
    net = run[0]
    image_A, image_B = tensor(ref, "image_A"), tensor(ref, "image_B")
    with torch.no_grad():
        trace = icon.analysis.trace_steps(net, image_A, image_B)
        final = net.register(image_A, image_B)
    assert trace.warped.shape == (10, 4, 1, 28, 28)
    for k in range(9):
        assert_matches(trace.warped[k], ref["step_input_x"][k], f"warped image after {k} steps")
        assert_matches(trace.displacement[k + 1], ref["step_displacement"][k], f"displacement of step {k + 1}")
    assert torch.equal(trace.displacement[0], torch.zeros_like(trace.displacement[0]))
    assert_matches(trace.phi[-1], ref["phi_AB_vectorfield"], "phi after 9 steps")
    assert_matches(trace.warped[-1], ref["warped_image_A"], "warped image after 9 steps")
    for field in final.losses._fields:
        assert torch.equal(getattr(trace.losses, field)[-1], getattr(final.losses, field)), field
        assert_matches(getattr(trace.losses, field)[-1].mean(), ref[f"loss.{field}"], f"{field} after 9 steps")
