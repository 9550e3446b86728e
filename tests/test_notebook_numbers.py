"""Every decimal number or percentage a notebook's prose quotes appears in its own outputs.

Numbers in the prose must be computed by the notebook (printed by an nbval-checked cell); this
catches prose left stale after the notebook is re-executed with new checkpoints or helpers.
Numbers inside $…$ (maths) are not checked.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHECKED = ["04_out_of_distribution.ipynb", "05_hunting_the_inner_objective.ipynb"]
NUMBER = re.compile(r"\d+\.\d+%?|\d+%")


def quoted_numbers(cells):
    for cell in cells:
        if cell["cell_type"] == "markdown":
            prose = re.sub(r"\$[^$]*\$", "", "".join(cell["source"]))
            yield from (match.group() for match in NUMBER.finditer(prose))


@pytest.mark.parametrize("name", CHECKED)
def test_numbers_in_the_prose_come_from_the_outputs(name):
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    outputs = "".join(
        "".join(output.get("text", ""))
        for cell in cells if cell["cell_type"] == "code" for output in cell.get("outputs", [])
    )
    missing = sorted({number for number in quoted_numbers(cells) if number not in outputs})
    assert not missing, f"{name}: the prose quotes {missing}, which no output prints"
