"""The post's world as one autograd node, with a hand-written backward pass: how `train` runs.

Through the modules (registration.py, losses.py), a training step of the post's network
is a graph of several hundred autograd nodes: nine calls of the MLP, nine chains of
displacement fields, nine warps. This module computes the same loss for that
configuration (one `FCNet` acting `steps` times in composition, SSD plus λ times
diffusion) in one node, and writes its backward pass out step by step:

- the fixed image's half of the first layer is computed once per batch, not once per step
  (the fixed image is the same in all nine calls);
- the last layer's rows are permuted so that it writes each displacement field straight
  into the channels-last layout the compiled sampler reads;
- walking back through the chains, the kernel adds each field's gradient into one buffer
  per field, and each weight's gradient over all steps is one matrix product.

The numbers are the modules' to float rounding (the sums are taken in another order):
tests/test_reference.py checks this path against icon_registration's numbers as it checks
the modules, and tests/test_fused.py checks it against the modules. Gradients agree less
tightly than losses on trained networks: a point that rounding moves across a pixel cell's
border changes the bilinear slope it sees. On batches of 128 trained pairs, both paths'
float32 gradients differ from float64 ones by at most about 1e-3 of their largest element
(the modules' by up to 5e-4, this path's by up to 1e-3, in the last layer; 1e-4 in the others).

    loss = training_loss(net, moving, fixed)    # what net(moving, fixed) returns, faster

It serves float32 tensors on the CPU with the compiled sampler, and only the network it was
written from: `why_not(net, moving, fixed)` says why the fused node does not serve a network
(another structure; a class or function it replaces that has been edited or subclassed; hooks
that it would skip). Anywhere else `training_loss` is simply `net(moving, fixed)`. Before
training on it, `helpers.train` also compares it with the modules on the first batch
(`cross_check`).
"""

import ctypes

import torch
import torch.nn.functional as F
from torch import nn

from .. import engine, losses, registration, warping
from ..losses import SSD, BendingLoss, DiffusionRegularizedNet
from ..models import FCNet
from ..registration import FunctionFromVectorField, TwoStepRegistration, check_finite
from .compiled import _address, apply, first_order_only

# What net(moving, fixed) runs for the post's network and the fused node stands in for: the
# node may run only while each of these is still the function it was written from (a reader
# who edits FCNet.forward, say to tanh, must train the edit). The loss functions themselves
# (losses.pair_losses) are called by both paths, so an edit there reaches both.
_REPLACED = {
    (owner, name): getattr(owner, name)
    for owner, names in [
        (FCNet, ("forward",)),
        (nn.Linear, ("forward",)),
        (FunctionFromVectorField, ("forward", "steps")),
        (TwoStepRegistration, ("forward", "steps")),
        (DiffusionRegularizedNet, ("forward", "register", "evaluate", "check_pair")),
        (SSD, ("__call__", "per_pair")),
        (warping, ("interpolate", "as_function", "compose", "displacement_transform")),
        (warping.DisplacementChain, ("__call__",)),
        (registration, ("as_function", "compose", "displacement_transform")),
        (F, ("relu", "linear")),
    ]
    for name in names
}
# Hooks a module can carry (nn.Module keeps them in these dicts; there is no public way to
# list them). The fused node calls no module, so none of them would fire.
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks")


def world_of(net) -> tuple[FCNet, int] | None:
    """(the FCNet, how many times it acts) if `net` is the post's configuration, else None.

    That is: a `DiffusionRegularizedNet` with SSD around `TwoStepRegistration`s nested as
    `models.multistep` nests them, all around one shared `FunctionFromVectorField(FCNet)`."""
    if type(net) is not DiffusionRegularizedNet or type(net.similarity) is not SSD:
        return None
    module, leaves = net.regis_net, []
    while type(module) is TwoStepRegistration:
        leaves.append(module.netPsi)
        module = module.netPhi
    leaves.append(module)
    inner = leaves[0]
    if type(inner) is not FunctionFromVectorField or any(leaf is not inner for leaf in leaves):
        return None
    if type(inner.net) is not FCNet or net.image_shape != (1, inner.net.size, inner.net.size):
        return None
    return inner.net, len(leaves)


def edited(net) -> str | None:
    """Why the fused node would not compute what `net(moving, fixed)` computes, in a few words,
    or None when it would: `net` is the post's configuration (`world_of`) built from the
    classes and functions the node was written from (none replaced, on its class or on one
    module), with plain `nn.Linear` layers, and no module carries a hook (which the node
    would skip)."""
    if world_of(net) is None:
        return "the network is not the post's configuration (one FCNet acting in composition, SSD and diffusion)"
    for (owner, name), original in _REPLACED.items():
        if getattr(owner, name) is not original:
            return f"{getattr(owner, '__name__', owner)}.{name} is not the function helpers.engine.fused was written from"
    fcnet = world_of(net)[0]
    layers = [getattr(fcnet, name, None) for name in ("dense1", "dense2", "dense3")]
    if any(type(layer) is not nn.Linear or layer.bias is None for layer in layers):
        return "FCNet's dense1, dense2, dense3 are not plain nn.Linear layers with biases"
    for module in net.modules():
        replaced = {"forward", "steps", "register", "evaluate", "check_pair"} & set(vars(module))
        if replaced:
            return f"{type(module).__name__}.{replaced.pop()} is replaced on the module itself"
        if any(getattr(module, hooks, None) for hooks in _HOOKS):
            return f"hooks are registered on a {type(module).__name__} (they fire only through the modules)"
    if any(getattr(nn.modules.module, hooks, None) for hooks in _GLOBAL_HOOKS):
        return "global module hooks are registered (they fire only through the modules)"
    return None


def why_not(net, moving: torch.Tensor, fixed: torch.Tensor) -> str | None:
    """Why `training_loss` would not take the fused path for this network and these images, or
    None when it takes it."""
    reason = edited(net)
    if reason is not None:
        return reason
    tensors = [moving, fixed, *net.parameters()]
    if not torch.is_grad_enabled():  # without gradients to compute, the modules are as fast
        return "gradients are off"
    if moving.requires_grad or fixed.requires_grad:
        return "the images require gradients"
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return "the fused node serves float32 CPU tensors only"
    if engine.active(*tensors) != "compiled":
        return "the compiled sampler is not in use"
    return None


def applies(net, moving: torch.Tensor, fixed: torch.Tensor) -> bool:
    """Whether `training_loss` takes the fused path for this network and these images."""
    return why_not(net, moving, fixed) is None


# How closely the fused node must agree with the modules on a batch (`cross_check`): each
# loss field to this relative tolerance (the losses are means of some 10⁵ float32 terms summed
# in another order: up to about 3e-5 apart on a trained network, tests/test_fused.py), and each
# parameter's gradient to this fraction of its largest element (on trained networks the two
# paths' float32 gradients differ by up to about 1e-3 of it, see the module's docstring). An
# edited network differs by far more.
LOSS_RTOL = 1e-4
GRADIENT_TOLERANCE = 5e-3


def cross_check(net, moving: torch.Tensor, fixed: torch.Tensor) -> str | None:
    """Compare the fused node's loss and parameter gradients with the modules', `net(moving,
    fixed)`, on one batch: None when they agree (LOSS_RTOL, GRADIENT_TOLERANCE), else what
    differs. Needs `applies(net, moving, fixed)`; leaves the parameters' .grad alone."""
    named = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    expected, expected_gradients = _loss_and_gradients(net(moving, fixed), named)
    actual, actual_gradients = _loss_and_gradients(_fused_loss(net, moving, fixed), named)
    for field in BendingLoss._fields:
        if field == "flips":  # a count, not differentiated: rounding may move one cell across zero
            continue
        wanted, got = getattr(expected, field).detach(), getattr(actual, field).detach()
        if not torch.isclose(got, wanted, rtol=LOSS_RTOL, atol=1e-7):
            return f"{field} is {got.item():.6g} through the fused node, {wanted.item():.6g} through the modules"
    for (name, _), wanted, got in zip(named, expected_gradients, actual_gradients):
        difference, scale = (got - wanted).abs().max().item(), wanted.abs().max().item()
        if not difference <= GRADIENT_TOLERANCE * scale:
            return f"the gradient of {name} differs by {difference:.3g} (its largest element: {scale:.3g})"
    return None


def _loss_and_gradients(loss: BendingLoss, named):
    """The loss and d all_loss / d each parameter (zeros where it does not depend on one)."""
    parameters = [p for _, p in named]
    if loss.all_loss.requires_grad:
        gradients = torch.autograd.grad(loss.all_loss, parameters, allow_unused=True)
    else:
        gradients = [None] * len(parameters)
    return loss, [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, gradients)]


def training_loss(net, moving: torch.Tensor, fixed: torch.Tensor) -> BendingLoss:
    """`net(moving, fixed)`: the `BendingLoss` of batch means, through the fused path when it
    applies (see `why_not`). Unlike `net(...)`, the fused path keeps no last result
    (`net.phi_AB` and friends); use `net.register` for those."""
    if why_not(net, moving, fixed) is not None:
        return net(moving, fixed)
    return _fused_loss(net, moving, fixed)


def _fused_loss(net, moving, fixed) -> BendingLoss:
    """The fused node's `BendingLoss` (the caller has checked that it applies)."""
    net.check_pair(moving, fixed)
    fcnet, steps = world_of(net)
    phi_grid, warped = apply(
        _World, moving, fixed, net.identity_map, steps,
        fcnet.dense1.weight, fcnet.dense1.bias, fcnet.dense2.weight, fcnet.dense2.bias,
        fcnet.dense3.weight, fcnet.dense3.bias,
    )  # fmt: skip
    per_pair = losses.pair_losses(phi_grid, net.identity_map, warped, fixed, net.similarity, net.lmbda)
    return BendingLoss(*(field.mean() for field in per_pair))


def _backwards(tensor: torch.Tensor, last: int):
    """The addresses of tensor[last], tensor[last - 1], …, tensor[0] (a chain's fields, in
    the order they act), for the kernel."""
    start, step = tensor.data_ptr(), tensor.stride(0) * tensor.element_size()
    return (ctypes.c_void_p * (last + 1))(*(start + j * step for j in range(last, -1, -1)))


def _through_relu(grad: torch.Tensor, output: torch.Tensor) -> None:
    """grad (of a ReLU's output) becomes the gradient of its input, in place: 0 where output is 0
    (as autograd's ReLU backward, threshold_backward, writes it)."""
    grad.masked_fill_(output <= 0, 0.0)


class _World(torch.autograd.Function):
    """(moving, fixed, identity, steps, weights and biases) -> φ on the grid [B, 2, H, W] and
    the moving image warped by it [B, 1, H, W], as `DiffusionRegularizedNet.register` gives
    them for the post's network.

    Step k (0, 1, …): the MLP sees X[k] (the moving image warped by steps 0..k-1; X[0] is
    the moving image) and the fixed image and returns the field D[k], packed [B, H·W, 2];
    the chain D[0] ∘ … ∘ D[k] (D[k] acting first) on the grid gives P[k], and the moving
    image sampled at P[k] is X[k + 1]."""

    @staticmethod
    def forward(ctx, moving, fixed, identity, steps, w1, b1, w2, b2, w3, b3):
        kernel, threads = engine.compiled_kernel(), torch.get_num_threads()
        batch, _, height, width = moving.shape
        n = height * width
        grid = identity.reshape(1, 2, n).contiguous()
        w1_moving, w1_fixed = w1[:, :n], w1[:, n:]
        # dense3's rows reordered from (channel, pixel) to (pixel, channel): packed output.
        w3_packed = w3.reshape(2, n, -1).transpose(0, 1).reshape(2 * n, -1)
        b3_packed = b3.reshape(2, n).t().reshape(-1)
        fixed_term = torch.addmm(b1, fixed.reshape(batch, n), w1_fixed.t())  # b1 + fixed's half

        X = moving.new_empty(steps, batch, n)
        X[0] = moving.reshape(batch, n)
        H1, H2 = moving.new_empty(steps, batch, w1.shape[0]), moving.new_empty(steps, batch, w2.shape[0])
        D = moving.new_empty(steps, batch, 2 * n)
        P = moving.new_empty(steps, batch, 2, n)
        visited = []  # visited[k]: where chain k evaluated each field, [B, k + 1, 2, N]
        warped = moving.new_empty(batch, 1, height, width)
        for k in range(steps):
            torch.addmm(fixed_term, X[k], w1_moving.t(), out=H1[k]).relu_()
            torch.addmm(b2, H1[k], w2.t(), out=H2[k]).relu_()
            check_finite(torch.addmm(b3_packed, H2[k], w3_packed.t(), out=D[k]))
            visited.append(moving.new_empty(batch, k + 1, 2, n))
            kernel.chain_forward(
                _backwards(D, k), k + 1, batch, height, width, _address(grid), 0, n, 1,
                _address(P[k]), _address(visited[k]), threads,
            )  # fmt: skip
            out = X[k + 1] if k + 1 < steps else warped
            kernel.sample_forward(_address(X[0]), batch, 1, height, width, _address(P[k]), 2 * n, n, _address(out), threads)
        ctx.save_for_backward(fixed, w1, w2, w3_packed)
        ctx.intermediates = X, H1, H2, D, P, visited
        return P[-1].reshape(batch, 2, height, width), warped

    @staticmethod
    @first_order_only
    def backward(ctx, grad_phi, grad_warped):
        kernel, threads = engine.compiled_kernel(), torch.get_num_threads()
        fixed, w1, w2, w3_packed = ctx.saved_tensors
        if ctx.intermediates is None:
            raise RuntimeError(
                "training_loss's graph can be walked back only once (it frees its buffers "
                "on the way): compute the loss again, or use net(moving, fixed) to keep the graph"
            )
        X, H1, H2, D, P, visited = ctx.intermediates
        ctx.intermediates = None
        steps, batch, n = X.shape
        height, width = fixed.shape[2:]
        w1_moving = w1[:, :n]

        # The loss reads φ on the grid and the warped image, both at P[-1].
        grad_points = grad_phi.reshape(batch, 2, n).contiguous()
        from_warp = torch.empty_like(grad_points)
        grad_warped = grad_warped.contiguous()
        kernel.sample_backward(
            _address(X[0]), batch, 1, height, width, _address(P[-1]), 2 * n, n,
            _address(grad_warped), None, _address(from_warp), threads,
        )  # fmt: skip
        grad_points = grad_points + from_warp

        G = torch.empty_like(D)  # G[k]: the gradient of D[k], summed over chains k..steps-1
        GA1, GA2 = torch.empty_like(H1), torch.empty_like(H2)
        for k in reversed(range(steps)):
            # Chain k writes G[k] (the first chain to reach it: the last one) or adds to it,
            # and so on to G[0]. After it, G[k] is complete: no earlier chain reads D[k].
            first = k == steps - 1
            kernel.chain_backward(
                _backwards(D, k), k + 1, batch, height, width, _address(visited[k]), n, 1,
                _address(grad_points), _backwards(G, k), (ctypes.c_int32 * (k + 1))(*[int(not first)] * (k + 1)),
                threads,
            )  # fmt: skip
            _through_relu(torch.mm(G[k], w3_packed, out=GA2[k]), H2[k])
            _through_relu(torch.mm(GA2[k], w2, out=GA1[k]), H1[k])
            if k > 0:  # X[k] is the moving image sampled at P[k - 1]
                grad_x = GA1[k] @ w1_moving
                grad_points = grad_x.new_empty(batch, 2, n)
                kernel.sample_backward(
                    _address(X[0]), batch, 1, height, width, _address(P[k - 1]), 2 * n, n,
                    _address(grad_x), None, _address(grad_points), threads,
                )  # fmt: skip

        # Each weight's gradient over all steps at once; the fixed image's half once.
        G, GA1, GA2 = G.reshape(steps * batch, -1), GA1.reshape(steps * batch, -1), GA2.reshape(steps * batch, -1)
        grad_w1 = torch.cat([GA1.t() @ X.reshape(steps * batch, n), GA1.reshape(steps, batch, -1).sum(0).t() @ fixed.reshape(batch, n)], 1)
        grad_w3 = (G.t() @ H2.reshape(steps * batch, -1)).reshape(n, 2, -1).transpose(0, 1).reshape(2 * n, -1)
        grad_b3 = G.sum(0).reshape(n, 2).t().reshape(-1)
        grad_w2 = GA2.t() @ H1.reshape(steps * batch, -1)
        return None, None, None, None, grad_w1, GA1.sum(0), grad_w2, GA2.sum(0), grad_w3, grad_b3
