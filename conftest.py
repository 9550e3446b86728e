"""Run-wide test setup (pytest loads this before tests/ and the nbval notebooks).

Tests never write into the working tree: every figure and every checkpoint a test or a notebook
under nbval saves goes to one temporary folder per run (`$HELPERS_FIGURES`, `$HELPERS_CHECKPOINTS`;
the notebooks' kernels inherit them). Shipped checkpoints are only read.
"""

import os
import shutil
import tempfile
from pathlib import Path

_SCRATCH = None


def pytest_configure(config):
    global _SCRATCH
    _SCRATCH = Path(tempfile.mkdtemp(prefix="helpers-tests-"))  # private (mode 0700), unpredictable name
    os.environ["HELPERS_FIGURES"] = str(_SCRATCH / "figures")
    os.environ["HELPERS_CHECKPOINTS"] = str(_SCRATCH / "checkpoints")


def pytest_unconfigure(config):
    if _SCRATCH is not None:
        shutil.rmtree(_SCRATCH, ignore_errors=True)
