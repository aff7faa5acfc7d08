"""Every student edition (lectures and homework) is current and behaves as CONTRIBUTING.md
promises: Run All stops at the first unwritten exercise with a message naming it, and no
check ever prints a pass for a stub.

nbval runs the instructor editions strictly (committed outputs). These tests run what a
student opens, cell by cell, and *keep going after an error* so that every check cell is
seen: each must refuse its stub with :class:`decoding_gpt.checks.NotAttempted` (never pass,
never blame a mistake the student did not make). Parametrised over the instructor
notebooks, so a new lecture or homework is picked up.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from decoding_gpt.checks import STUB_PREFIX
from decoding_gpt.homework.student import has_exercises, student_path
from decoding_gpt.tools.homework import instructor_editions
from decoding_gpt.tools.homework import main as homework_cli

ROOT = Path(__file__).resolve().parents[1]
EDITIONS = instructor_editions(ROOT)
IDS = [path.parent.name if path.name == "solution.ipynb" else path.stem for path in EDITIONS]
CHECK_CALL = re.compile(r"\bcheck_\w+\(")
PASS_LINE = "all checks passed"


def test_every_lecture_and_homework_has_a_student_edition():
    names = {path.name for path in EDITIONS}
    assert "00_setup.ipynb" in names and "solution.ipynb" in names
    for path in EDITIONS:
        assert student_path(path).exists(), f"{student_path(path)} missing: run make-student"


@pytest.mark.parametrize("notebook", EDITIONS, ids=IDS)
def test_student_edition_is_current(notebook: Path, capsys):
    # `make-student --check` exits 1 if regenerating would change the committed file
    assert homework_cli(["make-student", "--check", str(notebook)]) == 0, capsys.readouterr()


def _run_every_cell(path: Path) -> list[tuple[int, nbformat.NotebookNode, str, str]]:
    """Execute ``path`` cell by cell, continuing after errors; return each code cell's
    (index, cell, error name or "", error message or "")."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=240, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )  # fmt: skip
    outcomes = []
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            try:
                client.execute_cell(cell, index)
                outcomes.append((index, cell, "", ""))
            except CellExecutionError as err:
                outcomes.append((index, cell, err.ename, err.evalue))
    return outcomes


def _printed(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", EDITIONS, ids=IDS)
def test_student_edition_refuses_every_stub(notebook: Path):
    instructor = nbformat.read(notebook, as_version=4)
    outcomes = _run_every_cell(student_path(notebook))
    errors = [(index, name, message) for index, _, name, message in outcomes if name]
    if not has_exercises(instructor):
        assert not errors, f"a notebook without exercises must run to the end: {errors[:1]}"
        return

    # Run All stops at the first exercise, and says which one: a check's NotAttempted, or
    # the stub itself where the notebook calls the function before checking it.
    assert errors, "the student edition ran to the end: no stub was ever called"
    index, name, message = errors[0]
    stub_called = name == "NotImplementedError" and message.startswith(STUB_PREFIX)
    assert name == "NotAttempted" or stub_called, f"cell {index} failed before a stub: {message}"
    assert "`" in message, f"cell {index}: the message does not name the exercise: {message}"
    first_check = next(i for i, cell, _, _ in outcomes if CHECK_CALL.search(cell.source))
    assert index <= first_check, f"cell {index} ran past the first check (cell {first_check})"

    for index, cell, name, message in outcomes:
        assert PASS_LINE not in _printed(cell), f"cell {index} printed a pass in a student edition"
        if CHECK_CALL.search(cell.source):
            # every check refuses its stub by name, not with a diagnosis of a wrong answer
            assert name == "NotAttempted", f"check cell {index}: {name or 'no error'}: {message}"


EXERCISE_HEADING = re.compile(
    r"^### Exercise (\d+): .+ \(difficulty ([1-5])/5, ~\d+ min\)\s*$", re.M
)
LECTURE_NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))[1:]  # not 00


@pytest.mark.parametrize("notebook", LECTURE_NOTEBOOKS, ids=[p.stem for p in LECTURE_NOTEBOOKS])
def test_lecture_exercises_are_worth_doing(notebook: Path):
    """At least four exercises per lecture, one of them 3/5 or harder, each announced by a
    numbered heading with its difficulty and held in exactly one solution cell."""
    cells = nbformat.read(notebook, as_version=4).cells
    markdown = "\n".join(cell.source for cell in cells if cell.cell_type == "markdown")
    headings = EXERCISE_HEADING.findall(markdown)
    numbers = [int(number) for number, _ in headings]
    assert numbers == list(range(1, len(numbers) + 1)), f"exercises numbered {numbers}"
    solutions = [cell for cell in cells if "### BEGIN SOLUTION" in cell.source]
    assert len(solutions) == len(headings), f"{len(headings)} headings, {len(solutions)} cells"
    assert len(headings) >= 4, f"only {len(headings)} exercises"
    hardest = max(int(difficulty) for _, difficulty in headings)
    assert hardest >= 3, f"the hardest exercise is {hardest}/5"
    for cell in solutions:
        assert cell.metadata.get("jupyter", {}).get("source_hidden"), "solution not collapsed"
