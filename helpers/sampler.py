"""Bilinear sampling: the one numerical kernel under every warp and every composition.

Two operations, on images [B, C, H, W] and coordinates [B or 1, 2, H', W'] (row, column in
[0, 1], see `helpers.coordinates`):

    sample(values, coordinates)          values interpolated at the coordinates
    chain(displacements, coordinates)    φ_1 ∘ φ_2 ∘ … ∘ φ_K at the coordinates, φ_k(x) = x + D_k(x)

Each has two implementations that give the same numbers (to float rounding,
tests/test_sampler.py):

- "reference": `torch.nn.functional.grid_sample` (bilinear, align_corners=True, border
  padding), one call per image or field: icon_registration's arithmetic, operation for
  operation.
- "compiled": helpers/_bilinear.c, a small C kernel with a hand-written backward pass, built
  by the system's C compiler on first use and cached. It takes points eight at a time and
  walks a whole chain of fields in one call, where the reference makes a grid_sample call
  (and several tensor operations) per field. benchmarks/RESULTS.md measures the difference.

The compiled kernel serves float32 tensors on the CPU whenever a C compiler is available;
everything else (float64, CUDA) uses the reference. Set the environment variable
HELPERS_SAMPLER=reference to use grid_sample everywhere, or `with using("reference"): ...`.
"""

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .coordinates import identity_map

IMPLEMENTATIONS = ("compiled", "reference")
SOURCE = Path(__file__).with_name("_bilinear.c")


def _checked(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {IMPLEMENTATIONS}")
    return name


_requested = _checked(os.environ.get("HELPERS_SAMPLER", "compiled"))


@contextlib.contextmanager
def using(name: str):
    """Use sampler `name` ("compiled" or "reference") inside the with-block."""
    global _requested
    previous, _requested = _requested, _checked(name)
    try:
        yield
    finally:
        _requested = previous


# ----------------------------------------------------------------------------- reference


def grid_sample_bilinear(values: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """values [B, C, H, W] at coordinates [B, 2, H', W'] -> [B, C, H', W'], with grid_sample."""
    # grid_sample wants (x = column, y = row) in [-1, 1], channels last.
    grid = torch.stack((coordinates[:, 1], coordinates[:, 0]), dim=-1) * 2.0 - 1.0
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=True)


# ----------------------------------------------------------------------------- compiled

_library = None  # the loaded kernel, once built
_unavailable = None  # why it could not be built, once that has been tried


def _cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    folder = Path(base) / "mesa-registration-helpers"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:
        return Path(tempfile.gettempdir())


def _processor() -> str:
    """What a build tuned with -march=native depends on: the processor and its features."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags", "Features"))]
        return platform.machine() + "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.system()} {platform.processor()}"


def build(extra_flags: Sequence[str] = ()) -> ctypes.CDLL:
    """Compile _bilinear.c (once per source, flags, compiler and machine) and load it.

    `extra_flags` are added to the compiler's command line (tests use them to build the
    kernel's portable variant)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang)")
    source = SOURCE.read_bytes()
    flags = ["-O3", "-fPIC", "-shared", "-ffp-contract=off"]
    errors = []
    # Tuned for this processor when the compiler can; without OpenMP it runs on one thread.
    for extra in (["-march=native", "-fopenmp"], ["-fopenmp"], []):
        command = [compiler, *flags, *extra, *extra_flags]
        key = hashlib.sha256(source + " ".join(command + [_processor()]).encode())
        library = _cache_folder() / f"bilinear-{key.hexdigest()[:16]}.so"
        if not library.exists():
            partial = library.with_suffix(f".{os.getpid()}.tmp")
            result = subprocess.run(
                [*command, str(SOURCE), "-o", str(partial), "-lm"], capture_output=True, text=True
            )
            if result.returncode != 0:
                errors.append(f"{' '.join(command)}: {result.stderr.strip()[-500:]}")
                continue
            os.replace(partial, library)  # atomic: concurrent builds cannot see half a file
        kernel = ctypes.CDLL(str(library))
        pointer, size, count = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        kernel.sample_forward.argtypes = [pointer, size, size, size, size, pointer, size, size, pointer, count]
        kernel.sample_backward.argtypes = [pointer, size, size, size, size, pointer, size, size, pointer, pointer, pointer, count]
        kernel.chain_forward.argtypes = [pointer, size, size, size, size, pointer, size, size, count, pointer, pointer, count]
        kernel.chain_backward.argtypes = [pointer, size, size, size, size, pointer, size, count, pointer, pointer, pointer, pointer, count]
        kernel.pack_fields.argtypes = kernel.unpack_fields.argtypes = [pointer, size, size, pointer, count]
        return kernel
    raise RuntimeError("compiling helpers/_bilinear.c failed:\n" + "\n".join(errors))


def compiled_kernel():
    """The compiled kernel (a ctypes library), or None if it cannot be built here (warns once)."""
    global _library, _unavailable
    if _library is None and _unavailable is None:
        try:
            _library = build()
        except (OSError, RuntimeError) as error:
            _unavailable = str(error)
            warnings.warn(
                f"helpers: the compiled sampler is unavailable, so grid_sample is used (slower): {error}",
                RuntimeWarning,
                stacklevel=3,
            )
    return _library


def active(*tensors: torch.Tensor) -> str:
    """The implementation that serves these tensors: "compiled" or "reference"."""
    if _requested == "reference" or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return "reference"
    return "compiled" if compiled_kernel() is not None else "reference"


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
    @once_differentiable
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
    """The chain through fields given channels-last, [B, H, W, 2] (see `Field`).

    `sums` holds, per field, the `GradientSum` that its gradient is added to inside the
    kernel (the field's gradient then returned here is None), or None to return it."""

    @staticmethod
    def forward(ctx, coordinates, sums, *fields):
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
        ctx.on_grid, ctx.sums = on_grid, sums
        ctx.coordinate_shape = coordinates.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        visited, *fields = ctx.saved_tensors
        batch, height, width, _ = fields[0].shape
        # The kernel turns this copy of the output gradient into the coordinates' gradient.
        grad_points = grad_out.reshape(batch, 2, -1).contiguous().clone()
        targets, accumulate, grad_fields = [None] * len(fields), [0] * len(fields), [None] * len(fields)
        # The kernel walks the fields last to first: the first write to a sum comes first.
        for k in reversed(range(len(fields))):
            gradient_sum = ctx.sums[k] if ctx.needs_input_grad[2 + k] else None
            if gradient_sum is None:
                targets[k] = torch.empty_like(fields[k])
                grad_fields[k] = targets[k] if ctx.needs_input_grad[2 + k] else None
            else:
                targets[k], accumulate[k] = gradient_sum.target(fields[k])
        scratch = torch.empty_like(fields[0]) if any(accumulate) else None
        compiled_kernel().chain_backward(
            _addresses(fields), len(fields), batch, height, width, _address(visited),
            visited.shape[3], ctx.on_grid, _address(grad_points), _addresses(targets),
            (ctypes.c_int32 * len(fields))(*accumulate), _address(scratch) if scratch is not None else None,
            torch.get_num_threads(),
        )
        if not ctx.needs_input_grad[0]:
            grad_points = None
        elif ctx.coordinate_shape[0] < batch:
            grad_points = grad_points.sum(0, keepdim=True).reshape(ctx.coordinate_shape)
        else:
            grad_points = grad_points.reshape(ctx.coordinate_shape)
        return (grad_points, None, *grad_fields)


# Which backward pass is running (a private PyTorch function; without it autograd sums).
_graph_task = getattr(torch._C, "_current_graph_task_id", None)


class GradientSum:
    """The gradient of one field's channels-last copy, summed over the chains that read it.

    In the post's world step k's field is read by the chains of steps k to 9. Autograd would
    take a gradient tensor from each chain's backward pass and add them up, one addition at
    a time in the order those passes run; here each chain's pass adds its share into this one
    buffer inside the kernel instead, in the same order and with the same roundings, and the
    copy's backward pass (`_Pack`, which autograd runs after every chain that read it) takes
    the total. A sum belongs to one backward pass (autograd's graph task): what another pass
    left behind is discarded."""

    __slots__ = ("task", "total")

    def __init__(self):
        self.task, self.total = None, None

    def _current(self):
        task = _graph_task()
        if task != self.task:
            self.task, self.total = task, None

    def target(self, like: torch.Tensor):
        """The buffer a chain's backward pass adds to, and 1 (add) or 0 (the first: write)."""
        self._current()
        if self.total is None:
            self.total = torch.empty_like(like)
            return self.total, 0
        return self.total, 1

    def take(self):
        """The sum so far in this backward pass (None if nothing was added), then forget it."""
        self._current()
        total, self.total = self.total, None
        return total


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
    """A field's channels-last copy; its gradient is what the chains summed (GradientSum)."""

    @staticmethod
    def forward(ctx, values, gradient_sum):
        ctx.set_materialize_grads(False)
        ctx.gradient_sum = gradient_sum
        return _pack(values.detach(), packed_like=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_packed):
        total = ctx.gradient_sum.take()
        if grad_packed is not None:  # the copy was also used outside a chain's sum
            total = grad_packed if total is None else total + grad_packed
        return (None if total is None else _pack(total, packed_like=True)), None


class Field:
    """A displacement field [B, 2, H, W], with the channels-last copy [B, H, W, 2] that the
    compiled kernel reads (a cell's four corners of both channels in two 16-byte rows).

    The copy is made once, on first use, and shared by every chain that holds this Field:
    in the post's world step k's field is walked through by the chains of steps k to 9,
    and gradients reach `values` through the copy (the chains add them up in a
    `GradientSum`, and the copy's backward pass hands the total back to `values`). The copy
    is made again if `values` has been changed in place since, or if it was made without
    gradient tracking and is now needed with it."""

    __slots__ = ("values", "gradient_sum", "_copy", "_version")

    def __init__(self, values: torch.Tensor):
        self.values = values
        self.gradient_sum = None  # made with each copy
        self._copy, self._version = None, None

    def channels_last(self) -> torch.Tensor:
        if (
            self._copy is None
            or self._version != self.values._version
            or (torch.is_grad_enabled() and self.values.requires_grad and not self._copy.requires_grad)
        ):
            self.gradient_sum = GradientSum()  # for the chains that will read the new copy
            self._copy = _Pack.apply(self.values, self.gradient_sum)
            self._version = self.values._version
        return self._copy


# ----------------------------------------------------------------------------- the two operations


def sample(values: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """values [B, C, H, W] at coordinates [B or 1, 2, H', W'] -> [B, C, H', W'].

    Shapes are not checked here: `helpers.warping.interpolate` does that."""
    if active(values, coordinates) == "compiled" and min(values.shape[2:]) >= 2:
        return _CompiledSample.apply(values, coordinates)
    return grid_sample_bilinear(values, coordinates.expand(len(values), -1, -1, -1))


def chain(displacements: Sequence, coordinates: torch.Tensor) -> torch.Tensor:
    """φ_1 ∘ … ∘ φ_K at coordinates [B or 1, 2, H', W'], with φ_k(x) = x + D_k(x) and
    displacements = (D_1, …, D_K), each [B or 1, 2, H, W] (a tensor or a `Field`): D_K is
    applied first -> [B, 2, H', W'].

    Shapes are not checked here: `helpers.warping.DisplacementChain` does that."""
    fields = [d if isinstance(d, Field) else Field(d) for d in displacements]
    batch = max(len(coordinates), *(len(f.values) for f in fields))
    if active(coordinates, *(f.values for f in fields)) == "compiled":
        packed = [batched(f.channels_last(), batch) for f in fields]
        # A field shared by the batch ([1, ...]) gets its gradient summed over it by autograd.
        sums = tuple(f.gradient_sum if len(f.values) == batch and _graph_task else None for f in fields)
        return _CompiledChain.apply(coordinates, sums[::-1], *reversed(packed))
    for field in reversed(fields):
        coordinates = coordinates + sample(batched(field.values, batch), coordinates)
    return coordinates


def batched(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """tensor [1 or batch, ...] as [batch, ...] (no autograd node when it already is)."""
    return tensor if len(tensor) == batch else tensor.expand(batch, *tensor.shape[1:])
