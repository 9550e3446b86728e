"""Execute every numbered notebook in notebooks/ (then the appendices and the glossary), in order, and then
the worked solutions in solutions/, in place, each in a fresh kernel; then export them to HTML in html/ (the
offline edition, see export_html.py; the solutions in html/solutions/).

This is the main job behind `make run`: the notebooks write their figures into figures/,
so running them regenerates those too. Exits non-zero if any cell fails.

    python scripts/run_notebooks.py                 # all of them
    python scripts/run_notebooks.py 05              # only those whose names start with 05 (chapter and solutions)
"""

import sys
import time
from pathlib import Path

import nbformat
from export_html import HTML, export
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOLUTIONS = ROOT / "solutions"


def execute(path: Path) -> float:
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(
        notebook, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    nbformat.write(notebook, path)
    return time.perf_counter() - started


def main() -> int:
    # The chapters in order, then the appendices (A1_…), then the glossary (markdown only).
    paths = (sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) + sorted(NOTEBOOKS.glob("A[0-9]_*.ipynb")) + [NOTEBOOKS / "glossary.ipynb"]
             + sorted(SOLUTIONS.glob("*.ipynb")))
    prefixes = sys.argv[1:]
    if prefixes:
        unknown = [prefix for prefix in prefixes if not any(path.name.startswith(prefix) for path in paths)]
        if unknown:
            print(f"no notebook in notebooks/ or solutions/ starts with {unknown}; there are {[path.name for path in paths]}")
            return 2
        paths = [path for path in paths if path.name.startswith(tuple(prefixes))]
    if not paths:
        print("no notebooks in notebooks/ yet: nothing to execute")
    for path in paths:
        print(f"executing {path.relative_to(ROOT)} ...", flush=True)
        print(f"  done in {execute(path):.1f} s", flush=True)
    export([path for path in paths if path.parent == NOTEBOOKS], HTML)
    solutions = [path for path in paths if path.parent == SOLUTIONS]
    if solutions:
        export(solutions, HTML / "solutions")
    print(f"exported {len(paths)} notebooks to {HTML.relative_to(ROOT)}/ (open {HTML.relative_to(ROOT)}/*.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
