"""The reference test must catch real mistakes.

Each case copies helpers/ into a temporary folder, makes one plausible mistake in its
source, and runs tests/test_reference.py against the mutated copy, with the sampler
(compiled or grid_sample, see helpers/engine/__init__.py) that the mistake is in: it must fail.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# name: (file in helpers/, original text, mutated text, sampler the reference test runs with)
MUTATIONS = {
    "compose psi then phi": (
        "registration.py",
        "compose(phi, step.transform)",
        "compose(step.transform, phi)",
        "compiled",
    ),
    "zeros padding": ("engine/__init__.py", 'padding_mode="border"', 'padding_mode="zeros"', "reference"),
    "similarity without the factor 2": (
        "losses.py",
        "similarity_loss = 2 * similarity_per_pair",
        "similarity_loss = similarity_per_pair",
        "compiled",
    ),
    "align_corners=False": ("engine/__init__.py", "align_corners=True)", "align_corners=False)", "reference"),
    "warp of a warp": (
        "registration.py",
        "for step in self.netPsi.steps(warped, fixed)",
        "for step in self.netPsi.steps(as_function(warped)(phi(self.identity_map)), fixed)",
        "compiled",
    ),
    "compiled: chain applied in the wrong order": (
        "engine/compiled.py",
        "apply(_CompiledChain, coordinates, *reversed(packed))",
        "apply(_CompiledChain, coordinates, *packed)",
        "compiled",
    ),
    "compiled: gradient scattered to the wrong corner": (
        "engine/_bilinear.c",
        "v8 add[8] = {g0 * (1.0f - wr) * (1.0f - wc), g1 * (1.0f - wr) * (1.0f - wc),",
        "v8 add[8] = {g0 * (1.0f - wr) * wc, g1 * (1.0f - wr) * (1.0f - wc),",
        "compiled",
    ),
    "compiled: a chain's gradient on the grid replaces the sum instead of adding to it": (
        "engine/_bilinear.c",
        "grad_packed[2 * n] += g_rows[n];",
        "grad_packed[2 * n] = g_rows[n];",
        "compiled",
    ),
    "fused: the first layer's halves swapped": (
        "engine/fused.py",
        "w1_moving, w1_fixed = w1[:, :n], w1[:, n:]",
        "w1_fixed, w1_moving = w1[:, :n], w1[:, n:]",
        "compiled",
    ),
    "fused: the last layer's rows not reordered for the packed layout": (
        "engine/fused.py",
        "w3_packed = w3.reshape(2, n, -1).transpose(0, 1).reshape(2 * n, -1)",
        "w3_packed = w3",
        "compiled",
    ),
    "fused: each chain overwrites the fields' gradients": (
        "engine/fused.py",
        "first = k == steps - 1",
        "first = True",
        "compiled",
    ),
    "compiled: chain rule without the identity term": (
        "engine/_bilinear.c",
        "store8(g_rows + n, g0 + g0 * d0_drow + g1 * d1_drow);",
        "store8(g_rows + n, g0 * d0_drow + g1 * d1_drow);",
        "compiled",
    ),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_reference_test_fails_on_mutation(name, tmp_path):
    filename, original, mutated, implementation = MUTATIONS[name]
    shutil.copytree(ROOT / "helpers", tmp_path / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests" / "data", tmp_path / "tests" / "data")
    shutil.copy(ROOT / "tests" / "test_reference.py", tmp_path / "tests")
    source = tmp_path / "helpers" / filename
    text = source.read_text()
    assert text.count(original) == 1, f"mutation {name!r} no longer applies to helpers/{filename}"
    source.write_text(text.replace(original, mutated))

    environment = {**os.environ, "PYTHONPATH": str(tmp_path), "HELPERS_SAMPLER": implementation}
    imported = subprocess.run(
        [sys.executable, "-c", "import helpers; print(helpers.__file__)"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert Path(imported).is_relative_to(tmp_path), f"the mutated copy was not the one imported: {imported}"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_reference.py"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, f"the reference test passed despite {name!r}:\n{result.stdout[-2000:]}"
