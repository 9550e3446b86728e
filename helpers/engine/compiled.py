"""The compiled sampler's autograd nodes: sample and chain through helpers/engine/_bilinear.c.

`sample` and `chain` here compute what `helpers.engine.reference_sample` and
`reference_chain` compute (grid_sample; tests/test_sampler.py checks values and gradients),
on float32 CPU tensors, with a hand-written backward pass: the kernel's functions are named
after the operation and pass (sample_forward, chain_backward, ...). A chain walks all its
fields in one call; it reads each field channels-last, [B, H, W, 2] (a cell's four corners
of both channels in two 16-byte rows), a copy made once per field and shared by every chain
that reads that field (`channels_last`).
"""

import ctypes
import functools
import weakref
from typing import Sequence

import torch

from ..coordinates import identity_map
from . import kernel as _kernel


def compiled_kernel():
    return _kernel.compiled_kernel()


def _address(tensor: torch.Tensor):
    return ctypes.c_void_p(tensor.data_ptr())


def _addresses(tensors: Sequence[torch.Tensor]):
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _points(coordinates: torch.Tensor, batch: int):
    """Coordinates as [B or 1, 2, N] float32, and their batch stride (0: shared by the batch)."""
    points = coordinates.detach().reshape(coordinates.shape[0], 2, -1).contiguous()
    return points, (0 if points.shape[0] == 1 and batch > 1 else points.shape[1] * points.shape[2])


_pixel_grids = {}


def _is_pixel_grid(coordinates: torch.Tensor, height: int, width: int) -> bool:
    """Whether the coordinates are one copy of the identity grid of a height × width image."""
    if tuple(coordinates.shape) != (1, 2, height, width):
        return False
    if (height, width) not in _pixel_grids:
        _pixel_grids[height, width] = identity_map((1, 1, height, width))
    return torch.equal(coordinates, _pixel_grids[height, width])


FIRST_ORDER_ONLY = (
    "helpers' compiled sampler computes first derivatives only, so create_graph=True and torch.func "
    "transforms need grid_sample: set HELPERS_SAMPLER=reference, or run the code inside "
    "`with helpers.engine.using(\"reference\"):`"
)


def first_order_only(backward):
    """A hand-written backward pass, which has no backward pass of its own: autograd runs it
    with gradients on only under create_graph=True, and it then raises FIRST_ORDER_ONLY
    (rather than return gradients that a second differentiation would fail on obscurely)."""

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(FIRST_ORDER_ONLY)
        return backward(ctx, *grads)

    return checked


def apply(function: type[torch.autograd.Function], *inputs):
    """function.apply(*inputs), with FIRST_ORDER_ONLY as the error under torch.func transforms
    (which take only autograd.Functions written for them, with a setup_context method)."""
    try:
        return function.apply(*inputs)
    except RuntimeError as error:
        if "setup_context" in str(error):  # torch's message for an old-style Function under torch.func
            raise RuntimeError(FIRST_ORDER_ONLY) from error
        raise


class _CompiledSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, coordinates):
        values = values.detach().contiguous()
        batch, channels, height, width = values.shape
        points, stride = _points(coordinates, batch)
        out = values.new_empty(batch, channels, *coordinates.shape[2:])
        compiled_kernel().sample_forward(
            _address(values), batch, channels, height, width, _address(points), stride,
            points.shape[2], _address(out), torch.get_num_threads(),
        )
        ctx.save_for_backward(values, points)
        ctx.coordinate_shape, ctx.stride = coordinates.shape, stride
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out):
        values, points = ctx.saved_tensors
        batch, channels, height, width = values.shape
        stride = ctx.stride
        grad_out = grad_out.contiguous()  # kept alive: the kernel only gets its address
        grad_values = torch.zeros_like(values) if ctx.needs_input_grad[0] else None
        grad_points = values.new_empty(batch, 2, points.shape[2]) if ctx.needs_input_grad[1] else None
        compiled_kernel().sample_backward(
            _address(values), batch, channels, height, width, _address(points), stride, points.shape[2],
            _address(grad_out),
            _address(grad_values) if grad_values is not None else None,
            _address(grad_points) if grad_points is not None else None,
            torch.get_num_threads(),
        )
        if grad_points is not None:
            grad_points = grad_points.sum(0, keepdim=True) if points.shape[0] < batch else grad_points
            grad_points = grad_points.reshape(ctx.coordinate_shape)
        return grad_values, grad_points


class _CompiledChain(torch.autograd.Function):
    """(coordinates [B or 1, 2, H', W'], then the fields channels-last [B, H, W, 2] in the
    order they act) -> the points moved through every field [B, 2, H', W']. Each field's
    gradient is returned to autograd, which adds up those of a field read by several chains
    (at its shared channels-last copy, see `channels_last`)."""

    @staticmethod
    def forward(ctx, coordinates, *fields):
        fields = [field.detach().contiguous() for field in fields]
        batch, height, width, _ = fields[0].shape
        points, stride = _points(coordinates, batch)
        out = fields[0].new_empty(batch, 2, *coordinates.shape[2:])
        # Where each field is evaluated, for the backward pass (if there will be one).
        visited = fields[0].new_empty(batch, len(fields), 2, points.shape[2]) if any(ctx.needs_input_grad) else None
        on_grid = not coordinates.requires_grad and _is_pixel_grid(coordinates, height, width)
        compiled_kernel().chain_forward(
            _addresses(fields), len(fields), batch, height, width, _address(points), stride,
            points.shape[2], on_grid, _address(out), _address(visited) if visited is not None else None,
            torch.get_num_threads(),
        )
        ctx.save_for_backward(visited, *fields)
        ctx.on_grid, ctx.coordinate_shape = on_grid, coordinates.shape
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out):
        visited, *fields = ctx.saved_tensors
        batch, height, width, _ = fields[0].shape
        # The kernel turns this copy of the output gradient into the coordinates' gradient.
        grad_points = grad_out.reshape(batch, 2, -1).contiguous().clone()
        grad_fields = [torch.empty_like(field) for field in fields]  # each overwritten by the kernel
        compiled_kernel().chain_backward(
            _addresses(fields), len(fields), batch, height, width, _address(visited),
            visited.shape[3], ctx.on_grid, _address(grad_points), _addresses(grad_fields),
            (ctypes.c_int32 * len(fields))(), torch.get_num_threads(),
        )
        if not ctx.needs_input_grad[0]:
            grad_points = None
        elif ctx.coordinate_shape[0] < batch:
            grad_points = grad_points.sum(0, keepdim=True).reshape(ctx.coordinate_shape)
        else:
            grad_points = grad_points.reshape(ctx.coordinate_shape)
        return (grad_points, *(g if needed else None for g, needed in zip(grad_fields, ctx.needs_input_grad[1:])))


def _pack(values: torch.Tensor, packed_like: bool) -> torch.Tensor:
    """[B, 2, H, W] -> [B, H, W, 2] (packed_like False), or back (True), with the kernel."""
    values = values.contiguous()
    if packed_like:
        batch, height, width, _ = values.shape
        out = values.new_empty(batch, 2, height, width)
        function = compiled_kernel().unpack_fields
    else:
        batch, _, height, width = values.shape
        out = values.new_empty(batch, height, width, 2)
        function = compiled_kernel().pack_fields
    function(_address(values), batch, height * width, _address(out), torch.get_num_threads())
    return out


class _Pack(torch.autograd.Function):
    """A field's channels-last copy [B, H, W, 2]; its gradient goes back to [B, 2, H, W]."""

    @staticmethod
    def forward(ctx, values):
        return _pack(values.detach(), packed_like=False)

    @staticmethod
    @first_order_only
    def backward(ctx, grad_packed):
        return _pack(grad_packed, packed_like=True)


_copies = {}  # id(values) -> (weak reference to values, their version, the channels-last copy)


def channels_last(values: torch.Tensor) -> torch.Tensor:
    """values [B, 2, H, W] as the copy [B, H, W, 2] the kernel reads, made once and shared.

    In the post's world step k's field is read by the chains of steps k to 9: they share one
    copy, and autograd adds their gradients up there before the copy's backward pass turns
    the sum back into [B, 2, H, W] once. The copy is made again when `values` has been changed
    in place, or was copied without gradient tracking and now needs it; it is forgotten when
    `values` is. A leaf that requires gradients (a field being optimised) gets a copy per
    chain: a cached copy would keep it alive (its graph holds the leaf)."""
    tracked = torch.is_grad_enabled() and values.requires_grad
    if tracked and values.grad_fn is None:
        return apply(_Pack, values)
    entry = _copies.get(id(values))
    if entry is not None and entry[0]() is values:
        _, version, copy = entry
        if version == values._version and (copy.requires_grad or not tracked):
            return copy
    else:
        weakref.finalize(values, _copies.pop, id(values), None)
    copy = apply(_Pack, values) if tracked else _pack(values.detach(), packed_like=False)
    _copies[id(values)] = (weakref.ref(values), values._version, copy)
    return copy


def sample(values: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """values [B, C, H, W] (H, W >= 2) at coordinates [B or 1, 2, H', W'] -> [B, C, H', W']."""
    return apply(_CompiledSample, values, coordinates)


def chain(displacements: Sequence[torch.Tensor], coordinates: torch.Tensor, batch: int) -> torch.Tensor:
    """φ_1 ∘ … ∘ φ_K at coordinates [B or 1, 2, H', W'] (D_K acts first) -> [batch, 2, H', W']."""
    packed = [_batched(channels_last(d), batch) for d in displacements]
    return apply(_CompiledChain, coordinates, *reversed(packed))


def _batched(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """tensor [1 or batch, ...] as [batch, ...]: autograd sums a shared field's gradient over the batch."""
    return tensor if len(tensor) == batch else tensor.expand(batch, *tensor.shape[1:])
