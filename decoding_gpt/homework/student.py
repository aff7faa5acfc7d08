"""Generate a student notebook from a solution notebook (nbgrader-compatible markers).

The transformation, cell by cell:

- code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` becomes
  ``raise NotImplementedError("...")`` at the indentation of the BEGIN line, so the stub
  keeps the surrounding function's structure;
- lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are dropped;
- outputs and execution counts are cleared, and the "source_hidden" flag that collapses
  reference solutions in lectures is removed (there is nothing left to hide).

The result is deterministic (same solution, same bytes), which is what lets CI check that
the committed student notebook was regenerated after every change to the solution.
"""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = 'raise NotImplementedError("Your code here: replace this line with your solution.")'
MARKDOWN_STUB = "YOUR ANSWER HERE"
STUDENT_FILENAME = "student.ipynb"


class MarkerError(ValueError):
    """A BEGIN marker without its END marker (or the reverse) in a solution notebook."""


def _replace_blocks(lines: list[str], begin: str, end: str, stub: str | None) -> list[str]:
    """Replace every ``begin``..``end`` block (markers included) by ``stub`` (or nothing)."""
    result: list[str] = []
    inside = False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise MarkerError(f"line {number}: {begin!r} inside another block")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if stub is not None:
                result.append(indent + stub)
        elif stripped == end:
            if not inside:
                raise MarkerError(f"line {number}: {end!r} without {begin!r}")
            inside = False
        elif not inside:
            result.append(line)
    if inside:
        raise MarkerError(f"{begin!r} is never closed by {end!r}")
    return result


def student_source(source: str, cell_type: str) -> str:
    """The student version of one cell's source."""
    lines = source.split("\n")
    lines = _replace_blocks(lines, BEGIN_HIDDEN, END_HIDDEN, stub=None)
    stub = CODE_STUB if cell_type == "code" else MARKDOWN_STUB
    lines = _replace_blocks(lines, BEGIN_SOLUTION, END_SOLUTION, stub=stub)
    return "\n".join(lines)


def make_student_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return the student version of a solution notebook (the input is not modified)."""
    student = copy.deepcopy(solution)
    for index, cell in enumerate(student.cells):
        try:
            cell.source = student_source(cell.source, cell.cell_type)
        except MarkerError as err:
            raise MarkerError(f"cell {index}: {err}") from None
        cell.metadata.get("jupyter", {}).pop("source_hidden", None)
        if cell.metadata.get("jupyter") == {}:
            del cell.metadata["jupyter"]
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    student.metadata.pop("widgets", None)
    return student


def render_student(solution_path: Path) -> str:
    """The student notebook for ``solution_path``, as the exact text to write."""
    solution = nbformat.read(solution_path, as_version=4)
    return nbformat.writes(make_student_notebook(solution)) + "\n"


def write_students(solution_paths: list[Path], *, check: bool = False) -> list[Path]:
    """Write (or with ``check``, compare) ``student.ipynb`` beside each solution.

    Returns the student notebooks that were out of date (with ``check``) or rewritten.
    """
    changed = []
    for solution_path in solution_paths:
        target = solution_path.with_name(STUDENT_FILENAME)
        text = render_student(solution_path)
        if target.exists() and target.read_text() == text:
            continue
        changed.append(target)
        if not check:
            target.write_text(text)
    return changed
