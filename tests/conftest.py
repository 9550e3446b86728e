"""Shared test helpers."""

import torch

from helpers.models import inner_fcnet, post_network


def perturbed_post_network(std: float, seed: int = 0):
    """The post's network with a random (normal, `std`) last layer, so that it moves pixels."""
    torch.manual_seed(seed)
    net = post_network()
    with torch.no_grad():
        inner_fcnet(net).dense3.weight.normal_(std=std)
    return net
