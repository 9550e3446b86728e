"""helpers: the small library behind the notebooks.

It mirrors icon_registration's interface, so the post's code runs unchanged with
``import helpers as icon``::

    inner_net = icon.FunctionFromVectorField(FCNet(size=28))
    n2 = inner_net
    for _ in range(8):
        n2 = icon.TwoStepRegistration(n2, inner_net)
    net = icon.losses.DiffusionRegularizedNet(n2, icon.ssd, lmbda=.05)
    net.assign_identity_map(sample_batch.shape)
    loss = net(moving, fixed)

Modules, one concept each: coordinates (grids and input checks), warping (bilinear
interpolation, transforms as functions, composition), registration (the modules), losses,
models, analysis (per-step view), data (MNIST digits), train (the training loop and
checkpoints). The engine package (helpers/engine/) makes sampling and training fast and is
reached only through `helpers.engine.sample` and `.chain`, which warping calls.
"""

from . import analysis, coordinates, engine, losses, models, registration, sampler, warping
from .coordinates import identity_map
from .losses import DiffusionRegularizedNet, ssd
from .registration import FunctionFromVectorField, RegistrationModule, TwoStepRegistration
from .warping import as_function, compose

__all__ = [
    "DiffusionRegularizedNet",
    "FunctionFromVectorField",
    "RegistrationModule",
    "TwoStepRegistration",
    "analysis",
    "as_function",
    "compose",
    "coordinates",
    "engine",
    "identity_map",
    "losses",
    "models",
    "registration",
    "sampler",
    "ssd",
    "warping",
]
