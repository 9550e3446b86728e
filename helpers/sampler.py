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
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

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


CACHE_NAME = "mesa-registration-helpers"
_temporary_folder = None  # where this process builds the kernel when the cache folder is refused


def _cache_folder() -> Path:
    """A folder only this user can write to, for the built kernel: $XDG_CACHE_HOME/NAME or
    ~/.cache/NAME, created with mode 0700. A shared library there is loaded into the process,
    so a folder that is someone else's, writable by others, or a symbolic link is refused; so
    is one that cannot be made. Then (warning once) a fresh private temporary folder serves
    this process, and the kernel is built again in the next."""
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / CACHE_NAME
    problem = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        problem = _not_private(folder)
    except OSError as error:
        problem = str(error)
    if problem is None:
        return folder
    global _temporary_folder
    if _temporary_folder is None:
        _temporary_folder = Path(tempfile.mkdtemp(prefix="helpers-kernel-"))  # mode 0700, unpredictable name
        warnings.warn(f"helpers: not caching the compiled sampler in {folder} ({problem}); using {_temporary_folder} for this process", RuntimeWarning, stacklevel=2)
    return _temporary_folder



def _not_private(folder: Path) -> str | None:
    """Why `folder` is not this user's private folder, or None (it is; group and others lose
    any access they had)."""
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory (a symbolic link?)"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return "it belongs to another user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "others can write to it"
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return None


def _processor() -> str:
    """What a build tuned with -march=native depends on: the processor and its features."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags", "Features"))]
        return platform.machine() + "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.system()} {platform.processor()}"


FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off"]  # no fused multiply-adds: grid_sample's roundings
# Tried in turn: tuned for this processor with OpenMP, then without tuning, then one thread.
VARIANTS = (["-march=native", "-fopenmp"], ["-fopenmp"], [])


def build(extra_flags: Sequence[str] = ()) -> ctypes.CDLL:
    """Compile _bilinear.c (once per source, flags, compiler and machine) and load it.

    Each variant in VARIANTS is tried until one builds and loads. A failed build leaves a
    marker beside where the library would be (`.failed`, with the compiler's message), so
    that later processes skip that variant at once; delete the cache folder to retry them.
    `extra_flags` are added to the compiler's command line (tests use them to build the
    kernel's portable variant)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang)")
    source, folder = SOURCE.read_bytes(), _cache_folder()
    errors = []
    for variant in VARIANTS:
        command = [compiler, *FLAGS, *variant, *extra_flags]
        key = hashlib.sha256(source + " ".join(command + [_processor()]).encode()).hexdigest()[:16]
        library, failed = folder / f"bilinear-{key}.so", folder / f"bilinear-{key}.failed"
        if failed.exists():
            errors.append(f"{' '.join(command)}: failed before (see {failed})")
            continue
        if not library.exists():
            partial = library.with_suffix(f".{os.getpid()}.tmp")
            try:
                result = subprocess.run([*command, str(SOURCE), "-o", str(partial), "-lm"], capture_output=True, text=True)
            except OSError as error:  # $CC is not a program that runs
                result = subprocess.CompletedProcess(command, 1, "", str(error))
            if result.returncode != 0:
                message = f"{' '.join(command)}: {result.stderr.strip()[-500:]}"
                failed.write_text(message + "\n")
                errors.append(message)
                partial.unlink(missing_ok=True)
                continue
            os.replace(partial, library)  # atomic: concurrent builds cannot see half a file
        try:
            return _declared(ctypes.CDLL(str(library)))
        except OSError as error:  # built, but e.g. its OpenMP runtime cannot be found
            errors.append(f"{library}: {error}")
    raise RuntimeError("compiling helpers/_bilinear.c failed:\n" + "\n".join(errors))


def _declared(kernel: ctypes.CDLL) -> ctypes.CDLL:
    """The kernel with its functions' argument types declared (see _bilinear.c)."""
    pointer, size, count = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    kernel.sample_forward.argtypes = [pointer, size, size, size, size, pointer, size, size, pointer, count]
    kernel.sample_backward.argtypes = [pointer, size, size, size, size, pointer, size, size, pointer, pointer, pointer, count]
    kernel.chain_forward.argtypes = [pointer, size, size, size, size, pointer, size, size, count, pointer, pointer, count]
    kernel.chain_backward.argtypes = [pointer, size, size, size, size, pointer, size, count, pointer, pointer, pointer, count]
    kernel.pack_fields.argtypes = kernel.unpack_fields.argtypes = [pointer, size, size, pointer, count]
    return kernel


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


FIRST_ORDER_ONLY = (
    "helpers' compiled sampler computes first derivatives only, so create_graph=True and torch.func "
    "transforms need grid_sample: set HELPERS_SAMPLER=reference, or run the code inside "
    "`with helpers.sampler.using(\"reference\"):`"
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
    """The chain through fields given channels-last, [B, H, W, 2] (see `Field`). Each field's
    gradient is returned to autograd, which adds up those of a field read by several chains."""

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


class Field:
    """A displacement field [B, 2, H, W], with the channels-last copy [B, H, W, 2] that the
    compiled kernel reads (a cell's four corners of both channels in two 16-byte rows).

    The copy is made once, on first use, and shared by every chain that holds this Field:
    in the post's world step k's field is walked through by the chains of steps k to 9.
    It is made again if `values` has been changed in place since, or if it was made without
    gradient tracking and is now needed with it."""

    __slots__ = ("values", "_copy", "_version")

    def __init__(self, values: torch.Tensor):
        self.values = values
        self._copy, self._version = None, None

    def channels_last(self) -> torch.Tensor:
        if (
            self._copy is None
            or self._version != self.values._version
            or (torch.is_grad_enabled() and self.values.requires_grad and not self._copy.requires_grad)
        ):
            self._copy = apply(_Pack, self.values)
            self._version = self.values._version
        return self._copy


# ----------------------------------------------------------------------------- the two operations


def sample(values: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """values [B, C, H, W] at coordinates [B or 1, 2, H', W'] -> [B, C, H', W'].

    Shapes are not checked here: `helpers.warping.interpolate` does that."""
    if active(values, coordinates) == "compiled" and min(values.shape[2:]) >= 2:
        return apply(_CompiledSample, values, coordinates)
    return grid_sample_bilinear(values, coordinates.expand(len(values), -1, -1, -1))


def chain(displacements: Sequence, coordinates: torch.Tensor) -> torch.Tensor:
    """φ_1 ∘ … ∘ φ_K at coordinates [B or 1, 2, H', W'], with φ_k(x) = x + D_k(x) and
    displacements = (D_1, …, D_K), each [B or 1, 2, H, W] with H, W >= 2 (a tensor or a
    `Field`): D_K is applied first -> [B, 2, H', W'].

    Other shapes are not checked here: `helpers.warping.DisplacementChain` does that."""
    fields = [d if isinstance(d, Field) else Field(d) for d in displacements]
    for field in fields:
        if field.values.dim() != 4 or min(field.values.shape[2:]) < 2:
            raise ValueError(
                f"a displacement field needs at least 2×2 pixels [B, 2, H, W], got {list(field.values.shape)}"
            )
    batch = max(len(coordinates), *(len(f.values) for f in fields))
    if active(coordinates, *(f.values for f in fields)) == "compiled":
        packed = [batched(f.channels_last(), batch) for f in fields]
        return apply(_CompiledChain, coordinates, *reversed(packed))
    for field in reversed(fields):
        coordinates = coordinates + sample(batched(field.values, batch), coordinates)
    return coordinates


def batched(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """tensor [1 or batch, ...] as [batch, ...] (no autograd node when it already is)."""
    return tensor if len(tensor) == batch else tensor.expand(batch, *tensor.shape[1:])
