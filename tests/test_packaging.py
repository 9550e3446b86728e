"""The project's own files agree with each other: dependencies, package data, notebooks."""

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"pytorch": "torch"}
PIP_ONLY_EXTRAS = {"benchmark"}  # icon_registration is not on conda-forge; `make benchmark` pip-installs it


def split_requirement(requirement: str) -> tuple[str, str]:
    name, spec = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", requirement).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    from_pyproject = dict(map(split_requirement, project["dependencies"]))
    for name, extra in project["optional-dependencies"].items():
        if name not in PIP_ONLY_EXTRAS:
            from_pyproject.update(map(split_requirement, extra))

    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [entry for entry in environment["dependencies"] if isinstance(entry, str)]
    from_conda = dict(map(split_requirement, conda))
    assert from_conda.pop("python") == project["requires-python"]
    assert from_conda.pop("pip") == ""
    from_conda = {CONDA_TO_PYPI.get(name, name): spec for name, spec in from_conda.items()}
    assert from_conda == from_pyproject
    pip_section = next(entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict))
    assert pip_section == ["-e ."]


def test_the_python_floor_is_one_the_code_runs_on():
    """pyproject's requires-python admits no version the project's own code cannot import on:
    tomllib (scripts/colab.py, these tests) is in the standard library from Python 3.11."""
    floor = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert floor == ">=3.11", floor
    uses_tomllib = [path.relative_to(ROOT) for folder in ("helpers", "scripts", "tests", "benchmarks")
                    for path in (ROOT / folder).rglob("*.py") if re.search(r"^\s*import tomllib", path.read_text(), re.M)]
    assert uses_tomllib, "nothing imports tomllib any more: the floor could go back to 3.10"


def test_no_exact_torch_pins():
    """Colab's preinstalled torch must satisfy the requirements as they are."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name, spec = split_requirement(requirement)
        if name in ("torch", "torchvision"):
            assert spec.startswith(">=") and "," not in spec, requirement


def test_every_file_helpers_needs_is_package_data():
    """Data, checkpoints and the engine's C source travel with an installed package."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = config["packages"]
    assert {"helpers.data", "helpers.engine"} <= set(packages)
    for folder in [ROOT / "helpers", *(path.parent for path in (ROOT / "helpers").rglob("__init__.py"))]:
        package = ".".join(folder.relative_to(ROOT).parts)
        assert package in packages, f"{package} (a folder with an __init__.py) is not in the package list"
    files = [
        path.relative_to(ROOT)
        for path in (ROOT / "helpers").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    ]
    assert Path("helpers/engine/_bilinear.c") in files
    for path in files:
        # A pattern of a package that holds the file, relative to that package's folder.
        holders = [p for p in config["package-data"] if path.is_relative_to(p.replace(".", "/"))]
        assert any(
            fnmatch.fnmatch(path.relative_to(package.replace(".", "/")).as_posix(), pattern)
            for package in holders
            for pattern in config["package-data"][package]
        ), f"{path} is not package data"


def test_notebooks_are_committed_executed_top_to_bottom():
    """Execution counts run 1..n with no gaps: one fresh kernel, top to bottom."""
    paths = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
    assert len(paths) > 10
    for path in paths:
        cells = json.loads(path.read_text())["cells"]
        counts = [cell.get("execution_count") for cell in cells if cell["cell_type"] == "code"]
        assert counts == list(range(1, len(counts) + 1)), f"{path.name}: execution counts {counts}"


def run_colab(*arguments):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "colab.py"), *arguments], capture_output=True, text=True
    )


def test_colab_cells_agree_with_the_repository_url():
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("urls", {})
    if "Repository" not in urls:
        pytest.skip("no public repository URL yet: set [project.urls] Repository, then run scripts/colab.py")
    result = run_colab("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_colab_script_writes_a_setup_cell_and_a_badge_once_there_is_a_url(tmp_path):
    for folder in ("notebooks", "solutions"):
        (tmp_path / folder).mkdir()
    shutil.copy(ROOT / "notebooks" / "02_mlp_and_multistep.ipynb", tmp_path / "notebooks")
    shutil.copy(ROOT / "notebooks" / "glossary.ipynb", tmp_path / "notebooks")
    with_setup = tmp_path / "notebooks" / "02_mlp_and_multistep.ipynb"
    original = json.loads(with_setup.read_text())["cells"]
    original = [cell for cell in original if not "".join(cell["source"]).startswith("# colab-setup")]
    with_setup.write_text(json.dumps({**json.loads(with_setup.read_text()), "cells": original}))
    shutil.copy(with_setup, tmp_path / "solutions" / "02_mlp_and_multistep.ipynb")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')

    def first_cells(folder):
        cells = json.loads((tmp_path / folder / "02_mlp_and_multistep.ipynb").read_text())["cells"]
        return ["".join(cell["source"]) for cell in cells]

    assert run_colab("--root", str(tmp_path), "--check").returncode == 1
    assert run_colab("--root", str(tmp_path)).returncode == 0
    assert run_colab("--root", str(tmp_path), "--check").returncode == 0
    for folder in ("notebooks", "solutions"):
        cells = first_cells(folder)
        assert cells[0].startswith("# colab-setup") and cells[1:] == ["".join(c["source"]) for c in original]
    assert "colab-setup" not in (tmp_path / "notebooks" / "glossary.ipynb").read_text(), "the glossary has no code"

    pyproject = '[project]\nname = "x"\n[project.urls]\nRepository = "https://github.com/someone/collection"\n'
    (tmp_path / "pyproject.toml").write_text(pyproject)
    assert run_colab("--root", str(tmp_path), "--check").returncode == 1
    assert run_colab("--root", str(tmp_path)).returncode == 0
    assert run_colab("--root", str(tmp_path)).returncode == 0  # idempotent
    assert run_colab("--root", str(tmp_path), "--check").returncode == 0
    for folder in ("notebooks", "solutions"):
        cells = first_cells(folder)
        assert f"colab.research.google.com/github/someone/collection/blob/main/{folder}/02_mlp_and_multistep.ipynb" in cells[0]
        assert cells[1].startswith("# colab-setup") and sum("colab-badge" in cell for cell in cells) == 1

    (tmp_path / "pyproject.toml").write_text(pyproject.replace("someone", "another"))
    assert run_colab("--root", str(tmp_path), "--check").returncode == 1
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[project.urls]\nRepository = "https://example.org/x"\n')
    assert "must be https://github.com/OWNER/REPO" in run_colab("--root", str(tmp_path)).stderr
