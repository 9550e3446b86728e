"""Export executed notebooks to HTML that renders offline, widgets included.

    python scripts/export_html.py [--out html] notebooks/03_training_on_fives.ipynb ...

Each notebook becomes OUT/NAME.html with its saved widget state embedded, so that a reader
without a kernel can move the step slider through what the notebook computed. require.js, the
Jupyter widgets HTML manager and MathJax (which typesets the formulas) are copied from vendor/
into OUT and loaded from there, not from a CDN. `make run` calls this after executing the
notebooks.
"""

import argparse
import shutil
import sys
from pathlib import Path

from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "vendor"
HTML = ROOT / "html"
TEMPLATE = ROOT / "scripts" / "html_template" / "offline.html.j2"
SCRIPTS = ("require.js", "embed-amd.js", "tex-svg-full.js")


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
        body, _ = exporter.from_filename(str(path))
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
