"""Every homework in ``homework/*/``: the nbgrader metadata the grader relies on.

The solution notebooks run under nbval (``pytest homework/``); the student editions are
tested with the lectures' in ``tests/test_student_editions.py``. Parametrised over the
glob, so a new ``homework/hwN_x/solution.ipynb`` is picked up.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from decoding_gpt.homework.student import BEGIN_HIDDEN, BEGIN_SOLUTION

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted(ROOT.glob("homework/*/solution.ipynb"))
IDS = [path.parent.name for path in SOLUTIONS]


def _nbgrader(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def test_there_are_homeworks():
    assert SOLUTIONS, "no homework/*/solution.ipynb found"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_nbgrader_metadata_is_consistent(solution: Path):
    cells = nbformat.read(solution, as_version=4).cells
    meta = [_nbgrader(cell) for cell in cells]
    ids = [m["grade_id"] for m in meta if m]
    assert len(ids) == len(set(ids)), f"duplicate grade_id in {ids}"
    answers = [(c, m) for c, m in zip(cells, meta, strict=True) if m.get("solution")]
    graded = [(c, m) for c, m in zip(cells, meta, strict=True) if m.get("grade")]
    assert answers and graded
    for cell, m in answers:
        # an answer cell without markers would be handed to students complete
        assert BEGIN_SOLUTION in cell.source, f"answer cell {m['grade_id']} has no solution"
        assert not m.get("grade"), f"{m['grade_id']}: answer cells are not auto-graded"
    for cell, m in graded:
        assert cell.cell_type == "code", f"{m['grade_id']}: only code cells can be auto-graded"
        assert m.get("points", 0) > 0, f"{m['grade_id']} is worth no points"
        assert BEGIN_SOLUTION not in cell.source, f"{m['grade_id']}: graded cells are not answers"
    for cell, m in zip(cells, meta, strict=True):
        if BEGIN_HIDDEN in cell.source:
            assert m.get("grade"), "hidden tests outside a graded cell would never be scored"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_readme_names_every_graded_part(solution: Path):
    readme = solution.with_name("README.md")
    assert readme.exists(), f"{readme} is missing"
    text = readme.read_text()
    cells = nbformat.read(solution, as_version=4).cells
    # the grade report lists parts by grade_id: a student must be able to find each one
    for m in map(_nbgrader, cells):
        if m:
            assert f"`{m['grade_id']}`" in text, f"{readme.name} does not mention {m['grade_id']}"
