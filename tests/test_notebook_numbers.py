"""Numbers come from the code, by construction; and nbval checks only what no processor changes.

1. A chapter's prose (its markdown cells), and a worked solution's, quotes no result: no decimal number or percentage
   appears outside maths ($…$) and code (`…`), except the few constants listed below. Sentences
   that quote results are rendered by a code cell from the values it computed (an
   `IPython.display.Markdown` output), so they cannot go stale when the notebook is re-executed
   on another machine, with another seed or another checkpoint.
2. The outputs nbval compares (cells tagged `nbval-check-output`) hold no decimal numbers or
   percentages either, apart from a printed `TrainConfig(...)`: floating-point results differ
   between processors, so they are checked by assertions with tolerances instead.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"\d+\.\d+%?|\d+%")
# Numbers in the prose that are not results, per notebook, with the words around them.
NOT_RESULTS = {
    "notebooks/02_mlp_and_multistep.ipynb": {"1703.10908": "arXiv:1703.10908"},
    "notebooks/03_training_on_fives.ipynb": {"75%": "with the 25–75% band"},
    "notebooks/04_out_of_distribution.ipynb": {"1906.01820": "arXiv:1906.01820"},
    "notebooks/07_three_paradigms_and_controls.ipynb": {"1703.10908": "arXiv:1703.10908"},
}
# The chapters and their worked solutions.
NAMES = sorted(path.relative_to(ROOT).as_posix() for folder in ("notebooks", "solutions") for path in (ROOT / folder).glob("*.ipynb"))


def cells(name):
    return json.loads((ROOT / name).read_text())["cells"]


def prose_numbers(source: str) -> list[str]:
    text = re.sub(r"```.*?```", "", source, flags=re.S)           # fenced code
    text = re.sub(r"`[^`]*`", "", text)                            # inline code (may hold a $)
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$", "", text, flags=re.S)  # maths
    return NUMBER.findall(text)


def checked_text(cell) -> str:
    """What nbval compares in a cell: its streams and the text/plain of its results and displays."""
    text = "".join("".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", ""))
                   for output in cell.get("outputs", []))
    return re.sub(r"TrainConfig\(.*?\)", "", text, flags=re.S)


@pytest.mark.parametrize("name", NAMES)
def test_the_prose_quotes_no_results(name):
    exempt = NOT_RESULTS.get(name, {})
    prose = "".join("".join(cell["source"]) for cell in cells(name) if cell["cell_type"] == "markdown")
    for context in exempt.values():
        assert context in prose, f"{name}: {context!r} is no longer in the prose; update NOT_RESULTS"
    quoted = sorted({number for cell in cells(name) if cell["cell_type"] == "markdown"
                     for number in prose_numbers("".join(cell["source"])) if number not in exempt})
    assert not quoted, f"{name}: the prose quotes {quoted}; render results from the computed values instead"


@pytest.mark.parametrize("name", NAMES)
def test_nbval_compares_no_floating_point_results(name):
    for index, cell in enumerate(cells(name)):
        if "nbval-check-output" in cell.get("metadata", {}).get("tags", []):
            numbers = NUMBER.findall(checked_text(cell))
            assert not numbers, (f"{name}, cell {index}: nbval compares an output with {numbers}, which can "
                                 "differ between processors; untag the cell and assert with a tolerance")


def test_the_checks_catch_what_they_should():
    assert prose_numbers("after nine steps 0.19 ($\\lambda = 0.05$, `lmbda=0.5`), 16.0% of pairs") == ["0.19", "16.0%"]
    assert NUMBER.findall(checked_text({"outputs": [{"text": ["TrainConfig(lr=0.001)\n", "ratio 0.22\n"]}]})) == ["0.22"]
    assert NUMBER.findall(checked_text({"outputs": [{"data": {"text/plain": ["0.5"]}}]})) == ["0.5"]
