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
NUMBER = re.compile(r"\d+\.\d+%?|\d+%")
# Numbers in the prose that are not results, per notebook, with the words around them.
NOT_RESULTS = {
    "02_mlp_and_multistep.ipynb": {"1703.10908": "arXiv:1703.10908"},
    "03_training_on_fives.ipynb": {"75%": "with the 25–75% band"},
}


def quoted_numbers(cells):
    for cell in cells:
        if cell["cell_type"] == "markdown":
            prose = re.sub(r"\$[^$]*\$", "", "".join(cell["source"]))
            yield from (match.group() for match in NUMBER.finditer(prose))


@pytest.mark.parametrize("name", sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")))
def test_numbers_in_the_prose_come_from_the_outputs(name):
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    outputs = "".join(
        "".join(output.get("text", ""))
        for cell in cells if cell["cell_type"] == "code" for output in cell.get("outputs", [])
    )
    prose = "".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")
    exempt = NOT_RESULTS.get(name, {})
    for number, context in exempt.items():
        assert context in prose, f"{name}: {context!r} is no longer in the prose; update NOT_RESULTS"
    missing = sorted({number for number in quoted_numbers(cells) if number not in outputs and number not in exempt})
    assert not missing, f"{name}: the prose quotes {missing}, which no output prints"
