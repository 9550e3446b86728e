"""The compiled kernel: _bilinear.c built by the system's C compiler, cached, and loaded.

    kernel = compiled_kernel()    # a ctypes library, or None where it cannot be built (warns once)

The library is built once per source, flags, compiler and processor, into a folder only this
user can write to (`_cache_folder`), because loading it runs its code in this process. Each
variant of the flags (VARIANTS) is tried in turn until one builds and loads; a variant that
failed to build is remembered there, so a machine without OpenMP tries it once, not in every
process.
"""

import ctypes
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

SOURCE = Path(__file__).with_name("_bilinear.c")

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
    raise RuntimeError("compiling helpers/engine/_bilinear.c failed:\n" + "\n".join(errors))


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
