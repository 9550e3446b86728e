"""Give every notebook an "Open in Colab" badge and a first cell that installs helpers there.

    python scripts/colab.py           # write the two cells into each notebook (idempotent)
    python scripts/colab.py --check   # exit 1 if any notebook's cells disagree with the URL

The repository's public URL lives in one place, pyproject.toml's [project.urls] Repository
(e.g. "https://github.com/OWNER/REPO"); the badges and install cells are made from it. After
writing, execute the notebooks again (`make run`) so that they stay committed executed.
"""

import argparse
import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BADGE_MARK = "<!-- colab-badge -->"
INSTALL_MARK = "# colab-install"


def repository(root: Path) -> str:
    """owner/name of the GitHub repository named in pyproject.toml."""
    urls = tomllib.loads((root / "pyproject.toml").read_text())["project"].get("urls", {})
    url = urls.get("Repository")
    if url is None:
        raise SystemExit(
            'pyproject.toml has no [project.urls] Repository = "https://github.com/OWNER/REPO": '
            "set it to this collection's public repository first"
        )
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(\.git)?/?", url)
    if match is None:
        raise SystemExit(f"[project.urls] Repository must be https://github.com/OWNER/REPO, got {url!r}")
    return match.group(1)


def cells(repo: str, notebook: Path):
    badge = (
        f"{BADGE_MARK}\n[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{repo}/blob/main/notebooks/{notebook.name})"
    )
    install = (
        f"{INSTALL_MARK}: in Colab, install this collection's helpers; elsewhere, do nothing.\n"
        "import sys\n\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install --quiet "mesa-registration-helpers @ git+https://github.com/{repo}"'
    )
    return nbformat.v4.new_markdown_cell(badge), nbformat.v4.new_code_cell(install)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project folder (default: this one)")
    args = parser.parse_args()
    repo = repository(args.root)
    stale = []
    for path in sorted((args.root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        badge, install = cells(repo, path)
        ours = [c for c in notebook.cells if c.source.startswith((BADGE_MARK, INSTALL_MARK))]
        if [c.source for c in notebook.cells[:2]] == [badge.source, install.source] and len(ours) == 2:
            continue
        stale.append(path.name)
        if not args.check:
            notebook.cells = [badge, install] + [c for c in notebook.cells if c not in ours]
            nbformat.write(notebook, path)
    if args.check and stale:
        print("Colab cells missing or stale in: " + ", ".join(stale) + " (run python scripts/colab.py)")
        return 1
    print(("wrote " if stale else "up to date: ") + (", ".join(stale) or "every notebook"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
