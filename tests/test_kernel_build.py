"""Building the compiled sampler: where it is cached, what a failed build leaves behind, and
what happens without a C compiler. These tests do not skip where the kernel does not build."""

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import engine
from helpers.engine import kernel

ROOT = Path(__file__).resolve().parents[1]
COMPILER = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def test_the_compiled_kernel_builds_wherever_there_is_a_c_compiler():
    if COMPILER is None:
        pytest.skip("no C compiler here: only the reference sampler runs")
    # A compiler that is present but fails to build the kernel is a failure, not a skip.
    assert kernel.compiled_kernel() is not None, kernel._unavailable
    assert engine.active(torch.zeros(1)) == "compiled"
    assert engine.active(torch.zeros(1, dtype=torch.float64)) == "reference"


def test_without_a_c_compiler_grid_sample_serves_with_a_warning(tmp_path):
    """A fresh process with no compiler on PATH and CC unset, and an empty cache."""
    (tmp_path / "bin").mkdir()
    environment = {
        key: value for key, value in os.environ.items() if key not in ("CC", "HELPERS_SAMPLER", "PYTHONWARNINGS")
    }
    environment.update(PATH=str(tmp_path / "bin"), XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    script = textwrap.dedent("""
        import warnings
        import torch
        import helpers
        from helpers import engine
        from helpers.engine import fused
        from helpers.models import post_network
        from helpers.warping import interpolate

        assert helpers.__file__.startswith(%r), helpers.__file__
        values, points = torch.rand(2, 1, 28, 28), torch.rand(2, 2, 5, 5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warped = interpolate(values, points)
            interpolate(values, points)
        print("warnings:", len(caught), caught[0].message if caught else "")
        print("active:", engine.active(values))
        print("same as grid_sample:", torch.equal(warped, engine.reference_sample(values, points)))
        print("fused:", fused.why_not(post_network(), values, values))
    """ % str(ROOT))
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["warnings"].startswith("1 helpers: the compiled sampler is unavailable, so grid_sample is used")
    assert "no C compiler found" in lines["warnings"]
    assert lines["active"] == "reference"
    assert lines["same as grid_sample"] == "True"
    assert lines["fused"] == "the compiled sampler is not in use"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder for kernel.build, and no temporary folder chosen yet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(kernel, "_temporary_folder", None)
    return tmp_path / "cache" / kernel.CACHE_NAME


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_cache_folder_is_made_private(cache):
    assert kernel._cache_folder() == cache
    assert mode(cache) == 0o700 and os.lstat(cache).st_uid == os.getuid()
    cache.chmod(0o755)  # readable by others (an older helpers made it so): made private
    assert kernel._cache_folder() == cache and mode(cache) == 0o700


@pytest.mark.parametrize("how", ["writable by others", "a symbolic link"])
def test_a_cache_folder_others_could_write_to_is_refused(cache, tmp_path, how):
    cache.parent.mkdir(parents=True)
    if how == "writable by others":
        cache.mkdir()
        cache.chmod(0o777)
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        cache.symlink_to(tmp_path / "elsewhere")
    with pytest.warns(RuntimeWarning, match="not caching the compiled sampler"):
        folder = kernel._cache_folder()
    assert folder != cache and mode(folder) == 0o700 and folder.name.startswith("helpers-kernel-")
    assert kernel._cache_folder() == folder  # one temporary folder per process, one warning
    shutil.rmtree(folder)


def fake_compiler(tmp_path, body):
    """An executable shell script standing in for the C compiler; it logs each call."""
    script = tmp_path / "fake-cc"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n{body}\n')
    script.chmod(0o700)
    return script


def calls(tmp_path):
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_failed_builds_are_remembered(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(fake_compiler(tmp_path, 'echo "cc: error: unsupported option" >&2; exit 1')))
    with pytest.raises(RuntimeError, match="unsupported option"):
        kernel.build()
    assert len(calls(tmp_path)) == len(kernel.VARIANTS)
    assert len(list(cache.glob("*.failed"))) == len(kernel.VARIANTS) and not list(cache.glob("*.tmp"))
    with pytest.raises(RuntimeError, match="failed before"):
        kernel.build()  # as a new process would: no compiler run again
    assert len(calls(tmp_path)) == len(kernel.VARIANTS)


@pytest.mark.skipif(COMPILER is None, reason="needs a C compiler")
def test_without_openmp_the_single_threaded_build_serves(cache, tmp_path, monkeypatch):
    body = f'case "$*" in *-fopenmp*) echo "cc: error: unrecognized option -fopenmp" >&2; exit 1;; esac\nexec {COMPILER} "$@"'
    monkeypatch.setenv("CC", str(fake_compiler(tmp_path, body)))
    library = kernel.build()
    assert "-fopenmp" not in calls(tmp_path)[-1]
    assert len(list(cache.glob("*.failed"))) == 2
    assert kernel.build()._name == library._name and len(calls(tmp_path)) == 3  # cached, failures too


@pytest.mark.skipif(COMPILER is None, reason="needs a C compiler")
def test_a_library_that_does_not_load_gives_way_to_the_plainer_flags(cache, tmp_path, monkeypatch):
    # The tuned build "succeeds" but writes something that is not a shared library.
    body = textwrap.dedent(f"""
        case "$*" in *-march=native*)
            while [ "$#" -gt 1 ]; do if [ "$1" = "-o" ]; then echo "not a library" > "$2"; fi; shift; done
            exit 0;;
        esac
        exec {COMPILER} "$@"
    """)
    monkeypatch.setenv("CC", str(fake_compiler(tmp_path, body)))
    library = kernel.build()
    assert "-march=native" not in calls(tmp_path)[-1] and "-fopenmp" in calls(tmp_path)[-1]
    assert library.chain_forward is not None
