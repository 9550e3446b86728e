"""The models: the post's FCNet, and the 9-step world it is trained in."""

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .registration import FunctionFromVectorField, TwoStepRegistration


class FCNet(nn.Module):
    """The post's MLP: (moving, fixed) [B, 1, size, size] each -> displacement [B, 2, size, size].

    2·size² inputs -> 50 -> ReLU -> 50 -> ReLU -> 2·size² outputs. The last layer starts
    at zero, so an untrained network outputs no displacement: the identity transform.
    """

    def __init__(self, size: int = 28):
        super().__init__()
        self.size = size
        self.dense1 = nn.Linear(size * size * 2, 50)
        self.dense2 = nn.Linear(50, 50)
        self.dense3 = nn.Linear(50, size * size * 2)
        nn.init.zeros_(self.dense3.weight)
        nn.init.zeros_(self.dense3.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = torch.cat([moving, fixed], 1).reshape(-1, 2 * self.size * self.size)
        x = F.relu(self.dense1(x))
        x = F.relu(self.dense2(x))
        return self.dense3(x).reshape(-1, 2, self.size, self.size)


def multistep(inner, steps: int = 9):
    """Nest `inner` in TwoStepRegistration so that it acts `steps` times in composition.

    With steps = 9 this is the post's world: TwoStepRegistration nested 8 times around one
    shared inner module, each call seeing the moving image warped by all earlier calls.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    network = inner
    for _ in range(steps - 1):
        network = TwoStepRegistration(network, inner)
    return network


def post_network(size: int = 28, lmbda: float = 0.05, steps: int = 9) -> losses.DiffusionRegularizedNet:
    """The post's configuration, ready to train: a fresh FCNet acting `steps` times,
    trained on 2·SSD + λ·diffusion, with its identity map assigned for size×size images."""
    inner = FunctionFromVectorField(FCNet(size=size))
    net = losses.DiffusionRegularizedNet(multistep(inner, steps), losses.ssd, lmbda=lmbda)
    net.assign_identity_map((1, 1, size, size))
    return net


def inner_fcnet(net: losses.DiffusionRegularizedNet) -> FCNet:
    """The (single, shared) FCNet inside a network built by `post_network`."""
    fcnets = {id(m): m for m in net.modules() if isinstance(m, FCNet)}
    if len(fcnets) != 1:
        raise ValueError(f"expected exactly one shared FCNet in the network, found {len(fcnets)}")
    return next(iter(fcnets.values()))


def with_steps(net: losses.DiffusionRegularizedNet, steps: int) -> losses.DiffusionRegularizedNet:
    """The same trained inner module acting `steps` times instead (shared, not copied).

    `net` is a network built by `post_network` (any number of steps); the result has its
    loss (similarity and λ) and identity map, and the very same inner module, so it can
    run a trained network for more steps than it was trained with.
    """
    leaves = {id(m): m for m in net.modules() if isinstance(m, FunctionFromVectorField)}
    if len(leaves) != 1:
        raise ValueError(f"expected exactly one shared inner FunctionFromVectorField, found {len(leaves)}")
    extended = losses.DiffusionRegularizedNet(multistep(next(iter(leaves.values())), steps), net.similarity, net.lmbda)
    extended.assign_identity_map((1, *net.image_shape))
    return extended.train(net.training)
