"""Export executed notebooks to HTML that renders offline, widgets included.

    python scripts/export_html.py [--out html] notebooks/03_training_on_fives.ipynb ...

Each notebook becomes OUT/NAME.html with its saved widget state embedded, so that a reader
without a kernel can move the step slider through what the notebook computed (`make run` puts the
solutions in OUT/solutions/). Links between the notebooks (`[glossary](glossary.ipynb)`,
`[solutions](../solutions/NAME.ipynb)`) are pointed at the pages (`glossary.html`, `solutions/NAME.html`). require.js, the
Jupyter widgets HTML manager and MathJax (which typesets the formulas) are copied from vendor/
into OUT and loaded from there, not from a CDN. `make run` calls this after executing the
notebooks.
"""

import argparse
import re
import shutil
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "vendor"
HTML = ROOT / "html"
TEMPLATE = ROOT / "scripts" / "html_template" / "offline.html.j2"
SCRIPTS = ("require.js", "embed-amd.js", "tex-svg-full.js")
# A markdown link to a notebook beside this one, "](name.ipynb)" or "](name.ipynb#section)", or in the
# other folder: a chapter links its solutions as "](../solutions/name.ipynb)", a solution its chapter as
# "](../notebooks/name.ipynb)".
NOTEBOOK_LINK = re.compile(r"\]\((\.\./(?:notebooks|solutions)/)?([A-Za-z0-9_\-]+)\.ipynb(#[^)\s]*)?\)")
# Where the pages of the other folder lie, seen from a page: chapters in OUT/, solutions in OUT/solutions/.
PAGE_FOLDER = {None: "", "../solutions/": "solutions/", "../notebooks/": "../"}


def link_pages(notebook) -> None:
    """Point the markdown links between notebooks at their HTML pages, in place."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = NOTEBOOK_LINK.sub(
                lambda m: f"]({PAGE_FOLDER[m.group(1)]}{m.group(2)}.html{m.group(3) or ''})", cell.source)


def export(notebooks: list[Path], out: Path) -> list[Path]:
    """Write OUT/NAME.html for each notebook, and the vendored scripts they load; returns the pages."""
    missing = [str(path) for path in notebooks if path.suffix != ".ipynb" or not path.is_file()]
    if missing:
        raise FileNotFoundError(f"expected existing .ipynb files, got {missing}")
    out.mkdir(parents=True, exist_ok=True)
    for name in SCRIPTS:
        shutil.copy(VENDOR / name, out / name)
    exporter = HTMLExporter(
        template_name="lab", template_file=str(TEMPLATE),
        require_js_url="require.js", widget_renderer_url="embed-amd.js", mathjax_url="tex-svg-full.js",
    )
    pages = []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        link_pages(notebook)
        body, _ = exporter.from_notebook_node(notebook)
        pages.append(out / f"{path.stem}.html")
        pages[-1].write_text(body, encoding="utf-8")
    return pages


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=HTML, help="folder for the pages (default: html/)")
    args = parser.parse_args(argv)
    for page in export(args.notebooks, args.out):
        print("wrote", page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
