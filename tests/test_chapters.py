"""Every chapter is one class session: outcomes and prerequisites first, a summary and exercises
last, prose a lecturer can cover in about 45 minutes, and a worked solution to every exercise."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(path.name for folder in ("[0-9][0-9]_*.ipynb", "A[0-9]_*.ipynb") for path in (ROOT / "notebooks").glob(folder))
MAX_WORDS = 3000  # about 45 minutes of class
EXERCISE = re.compile(r"^(\d+)\. ", re.M)


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def markdown(path: Path) -> list[str]:
    return ["".join(cell["source"]) for cell in cells(path) if cell["cell_type"] == "markdown"]


def prose_words(path: Path) -> int:
    """Words of prose: the markdown cells and the markdown the code cells rendered (their sentences)."""
    texts = markdown(path) + ["".join(output.get("data", {}).get("text/markdown", ""))
                              for cell in cells(path) for output in cell.get("outputs", [])]
    return sum(len(text.split()) for text in texts)


def exercises(path: Path) -> list[int]:
    """The numbers of the chapter's exercises, in order."""
    text = "\n".join(markdown(path))
    section = text.split("## Exercises", 1)[1]
    section = re.split(r"^#{1,2} ", section, flags=re.M)[0]
    return [int(number) for number in EXERCISE.findall(section)]


def test_there_are_chapters():
    assert "01_registration_background.ipynb" in CHAPTERS and "A1_making_it_fast.ipynb" in CHAPTERS


@pytest.mark.parametrize("name", CHAPTERS)
def test_a_chapter_opens_with_outcomes_and_prerequisites_and_closes_with_a_summary(name):
    text = markdown(ROOT / "notebooks" / name)
    opening = "\n".join(text[:3])
    assert opening.startswith(f"# {name[:2]} · "), f"{name}: the first markdown cell is the chapter's title"
    assert "By the end of this chapter you will be able to" in opening, name
    assert "**Prerequisites:**" in opening, name
    headings = [line for cell in text for line in cell.splitlines() if line.startswith("## ")]
    assert headings[-2:] == ["## Summary", "## Exercises"], f"{name}: ends with {headings[-2:]}"
    assert any("](glossary.ipynb)" in cell for cell in text), f"{name}: links the glossary"


@pytest.mark.parametrize("name", CHAPTERS)
def test_a_chapter_fits_a_session(name):
    words = prose_words(ROOT / "notebooks" / name)
    assert words <= MAX_WORDS, f"{name}: {words} words of prose (markdown and rendered sentences), more than {MAX_WORDS}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_exercise_has_a_worked_solution(name):
    numbers = exercises(ROOT / "notebooks" / name)
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 2, f"{name}: exercises {numbers}"
    solution = ROOT / "solutions" / name
    assert solution.is_file(), f"{name}: no solutions/{name}"
    assert f"](../solutions/{name})" in "\n".join(markdown(ROOT / "notebooks" / name)), f"{name}: links its solutions"
    text = cells(solution)
    assert f"](../notebooks/{name})" in "".join(text[1]["source"] if text[0]["cell_type"] == "code" else text[0]["source"]), \
        f"solutions/{name}: links its chapter at the top"
    headings = [(index, line) for index, cell in enumerate(text) if cell["cell_type"] == "markdown"
                for line in "".join(cell["source"]).splitlines() if line.startswith("## ")]
    assert [line for _, line in headings] == [f"## Exercise {number}" for number in numbers], \
        f"solutions/{name}: one '## Exercise k' section per exercise, in order: {[line for _, line in headings]}"
    bounds = [index for index, _ in headings] + [len(text)]
    for (start, line), end in zip(headings, bounds[1:]):
        assert any(cell["cell_type"] == "code" and "".join(cell["source"]).strip() for cell in text[start:end]), \
            f"solutions/{name}, {line}: no code, so nothing checks the answer"


def test_the_checks_catch_what_they_should(tmp_path):
    chapter = {"cells": [{"cell_type": "markdown", "source": "## Exercises\n\n1. a\n2. b\n   3. not one\n\n## After\n\n4. no"}]}
    (tmp_path / "c.ipynb").write_text(json.dumps(chapter))
    assert exercises(tmp_path / "c.ipynb") == [1, 2]
    words = {"cells": [{"cell_type": "markdown", "source": "one two"},
                       {"cell_type": "code", "source": "", "outputs": [{"data": {"text/markdown": ["three four five"]}}]}]}
    (tmp_path / "w.ipynb").write_text(json.dumps(words))
    assert prose_words(tmp_path / "w.ipynb") == 5
