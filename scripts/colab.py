"""Give every notebook a first cell that installs helpers in Colab, and an "Open in Colab" badge
once the repository has a public URL.

    python scripts/colab.py           # write the cells into each notebook (idempotent)
    python scripts/colab.py --check   # exit 1 if any notebook's cells are missing or stale

The setup cell needs no URL: in Colab (or any Jupyter where `helpers` cannot be imported) it
looks for this collection in the working directory, its parents and three levels below it (where
a clone or an upload lands, e.g. /content/REPO or /content/drive/MyDrive/REPO), installs helpers
from that folder with pip (the preinstalled torch satisfies the requirements and is kept), and
otherwise says in one sentence what to do. Where helpers is importable (`make lab`) it does nothing.

The repository's public URL lives in one place, pyproject.toml's [project.urls] Repository
(e.g. "https://github.com/OWNER/REPO"); the badges are made from it, and only when it is set.
After writing, execute the notebooks again (`make run`) so that they stay committed executed.
"""

import argparse
import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BADGE_MARK = "<!-- colab-badge -->"
SETUP_MARK = "# colab-setup"
OLD_MARKS = ("# colab-install",)  # the install cell this script wrote before the setup cell
PACKAGE = "mesa-registration-helpers"

SETUP = f'''{SETUP_MARK}: in Colab (or wherever `helpers` is missing), install it from this collection's folder.
import importlib.util, pathlib, subprocess, sys


def _is_collection(folder):
    project = folder / "pyproject.toml"
    return project.is_file() and 'name = "{PACKAGE}"' in project.read_text() and (folder / "helpers").is_dir()


if importlib.util.find_spec("helpers") is None:
    here = pathlib.Path.cwd()
    below = (path.parent for depth in ("*/", "*/*/", "*/*/*/") for path in sorted(here.glob(depth + "pyproject.toml")))
    root = next((folder for folder in (here, *here.parents, *below) if _is_collection(folder)), None)
    if root is None:
        raise ModuleNotFoundError(
            "helpers is not installed and this collection is not in the working directory or below it: "
            "clone or upload the whole repository (with helpers/ and pyproject.toml) and run this cell again.")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", str(root)], check=True)  # keeps Colab's torch
    importlib.invalidate_caches()
    print(f"installed helpers from {{root}}")'''


def repository(root: Path) -> str | None:
    """owner/name of the GitHub repository named in pyproject.toml, or None while there is none."""
    urls = tomllib.loads((root / "pyproject.toml").read_text())["project"].get("urls", {})
    url = urls.get("Repository")
    if url is None:
        return None
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(\.git)?/?", url)
    if match is None:
        raise SystemExit(f"[project.urls] Repository must be https://github.com/OWNER/REPO, got {url!r}")
    return match.group(1)


def notebooks(root: Path) -> list[Path]:
    """Every notebook with code: the chapters, the appendices and the solutions (not the glossary)."""
    folder = root / "notebooks"
    return (sorted(folder.glob("[0-9][0-9]_*.ipynb")) + sorted(folder.glob("A[0-9]_*.ipynb"))
            + sorted((root / "solutions").glob("*.ipynb")))


def cells(repo: str | None, root: Path, notebook: Path) -> list:
    """The cells this script owns, in the order they open the notebook."""
    setup = nbformat.v4.new_code_cell(SETUP)
    if repo is None:
        return [setup]
    where = notebook.relative_to(root).as_posix()
    badge = (
        f"{BADGE_MARK}\n[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{repo}/blob/main/{where})"
    )
    return [nbformat.v4.new_markdown_cell(badge), setup]


def ours(cell) -> bool:
    return cell.source.startswith((BADGE_MARK, SETUP_MARK, *OLD_MARKS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project folder (default: this one)")
    args = parser.parse_args()
    repo = repository(args.root)
    stale = []
    for path in notebooks(args.root):
        notebook = nbformat.read(path, as_version=4)
        wanted = cells(repo, args.root, path)
        head = notebook.cells[: len(wanted)]
        if ([c.cell_type for c in head], [c.source for c in head]) == ([c.cell_type for c in wanted], [c.source for c in wanted]) \
                and sum(map(ours, notebook.cells)) == len(wanted):
            continue
        stale.append(path.relative_to(args.root).as_posix())
        if not args.check:
            notebook.cells = wanted + [c for c in notebook.cells if not ours(c)]
            nbformat.write(notebook, path)
    if args.check and stale:
        print("Colab cells missing or stale in: " + ", ".join(stale) + " (run python scripts/colab.py)")
        return 1
    print(("wrote " if stale else "up to date: ") + (", ".join(stale) or "every notebook"))
    if repo is None:
        print("no [project.urls] Repository in pyproject.toml yet: setup cells only, no Colab badges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
