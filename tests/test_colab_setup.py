"""The first cell of every notebook installs helpers where it is missing, as in Colab.

The test builds what a Colab session has when a reader has cloned or uploaded the collection:
a fresh Python environment in which torch and the other libraries are already installed but
helpers is not, no `make`, and a working directory outside the project with the collection in a
folder below it (as /content/REPO). The libraries come from this project's environment, seen
through a folder of links that leaves out helpers itself, so nothing is downloaded but pip's
build tools, and this project's environment is not touched.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP_MARK = "# colab-setup"


def setup_source(notebook: Path) -> str:
    first = json.loads(notebook.read_text())["cells"][0]
    source = "".join(first["source"])
    assert first["cell_type"] == "code" and source.startswith(SETUP_MARK), f"{notebook.name}: first cell is not the setup cell"
    return source


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """(python, content): a fresh environment with the preinstalled libraries, and a working folder."""
    base = tmp_path_factory.mktemp("colab")
    preinstalled = base / "preinstalled"                      # everything of ours but helpers
    preinstalled.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if not entry.name.startswith(("mesa_registration_helpers", "__editable__", "_mesa_registration_helpers")):
            (preinstalled / entry.name).symlink_to(entry)
    environment = base / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "preinstalled.pth").write_text(f"{preinstalled}\n")
    content = base / "content"
    content.mkdir()
    return python, content


def run(python, cwd, *arguments):
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run([str(python), *arguments], cwd=cwd, capture_output=True, text=True, env=environment, timeout=600)


PROBE = ("import helpers, torch\nfrom helpers.classifier import load_judges\nfrom helpers.data import load_digits\n"
         "from helpers.train import checkpoint_path, load_checkpoint\n"
         "print(helpers.__file__)\nprint(torch.__file__, torch.__version__)\n"
         "print(tuple(load_digits(5, 'heldout').shape), load_checkpoint(checkpoint_path('fives')).config.registration_steps,"
         " len(load_judges()))")


def test_the_setup_cell_installs_helpers_from_a_clone_and_keeps_torch(colab):
    python, content = colab
    source = setup_source(ROOT / "notebooks" / "01_registration_background.ipynb")
    before = run(python, content, "-c", "import importlib.util, torch; print(importlib.util.find_spec('helpers'), torch.__file__, torch.__version__)")
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith("None "), "helpers must not be importable before the cell runs"

    missing = run(python, content, "-c", source)                  # nothing uploaded yet
    assert missing.returncode != 0
    message = missing.stderr.strip().splitlines()[-1]
    assert message.startswith("ModuleNotFoundError: helpers is not installed") and "clone or upload the whole repository" in message, message

    clone = content / "collection"                               # as a clone or an upload lands in /content
    clone.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, clone / name)
    shutil.copytree(ROOT / "helpers", clone / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    installed = run(python, content, "-c", source)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert f"installed helpers from {clone}" in installed.stdout

    probe = run(python, content, "-c", PROBE)
    assert probe.returncode == 0, probe.stderr
    helpers_file, torch_line, shapes = probe.stdout.strip().splitlines()
    assert not helpers_file.startswith(str(clone)) and "site-packages" in helpers_file, helpers_file
    assert torch_line == before.stdout.split(" ", 1)[1].strip(), "the preinstalled torch is kept"
    assert shapes == "(892, 1, 28, 28) 9 3", "the data, the checkpoints and the judges came with the package"

    again = run(python, content, "-c", source)                    # a second run does nothing
    assert again.returncode == 0 and again.stdout == "", again.stdout + again.stderr


def test_every_notebook_opens_with_the_same_setup_cell():
    sources = {path.relative_to(ROOT).as_posix(): setup_source(path)
               for folder in ("notebooks", "solutions") for path in sorted((ROOT / folder).glob("*.ipynb"))
               if path.name != "glossary.ipynb"}
    assert len(set(sources.values())) == 1, "every notebook's setup cell is the one scripts/colab.py writes"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "colab.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
