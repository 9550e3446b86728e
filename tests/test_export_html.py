"""The offline HTML edition's export, without a browser (tests/test_browser.py opens it in one)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "scripts" / "export_html.py"


def test_pages_load_require_js_the_widget_manager_and_mathjax_from_their_folder(tmp_path):
    notebook = ROOT / "notebooks" / "03_training_on_fives.ipynb"
    subprocess.run([sys.executable, EXPORT, "--out", tmp_path, notebook], check=True, capture_output=True)
    page = (tmp_path / "03_training_on_fives.html").read_text()
    for name in ("require.js", "embed-amd.js", "tex-svg-full.js"):
        assert (tmp_path / name).read_bytes() == (ROOT / "vendor" / name).read_bytes(), name
    assert "var widgetRendererSrc = 'embed-amd.js';" in page
    assert 'application/vnd.jupyter.widget-state+json' in page
    scripts = re.findall(r'<script[^>]* src="([^"]*)"', page)
    assert sorted(scripts) == ["require.js", "tex-svg-full.js"], scripts  # nothing from a CDN
    assert "window.MathJax = {" in page and "MathJax.Hub.Config" not in page  # MathJax 3, not 2


def test_a_missing_notebook_is_named(tmp_path):
    result = subprocess.run([sys.executable, EXPORT, "--out", tmp_path, "notebooks/99_missing.ipynb"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "expected existing .ipynb files" in result.stderr and "99_missing.ipynb" in result.stderr


def test_links_between_notebooks_point_at_their_pages(tmp_path):
    notebook = ROOT / "notebooks" / "04_out_of_distribution.ipynb"
    subprocess.run([sys.executable, EXPORT, "--out", tmp_path, notebook], check=True, capture_output=True)
    page = (tmp_path / "04_out_of_distribution.html").read_text()
    assert 'href="glossary.html"' in page and 'href="glossary.ipynb"' not in page


def test_links_between_chapters_and_their_solutions_point_at_their_pages(tmp_path):
    chapter, solution = ROOT / "notebooks" / "01_registration_background.ipynb", ROOT / "solutions" / "01_registration_background.ipynb"
    subprocess.run([sys.executable, EXPORT, "--out", tmp_path, chapter], check=True, capture_output=True)
    subprocess.run([sys.executable, EXPORT, "--out", tmp_path / "solutions", solution], check=True, capture_output=True)
    page = (tmp_path / "01_registration_background.html").read_text()
    assert 'href="solutions/01_registration_background.html"' in page and "../solutions/" not in page
    page = (tmp_path / "solutions" / "01_registration_background.html").read_text()
    assert 'href="../01_registration_background.html"' in page and "../notebooks/" not in page
