"""Student editions of lectures and homework, generated from the instructor editions.

One exercise mechanism for both (nbgrader-compatible markers). The instructor edition
(``notebooks/NN_topic.ipynb``, ``homework/hwN_topic/solution.ipynb``) holds each exercise
as one cell whose reference code sits between ``### BEGIN SOLUTION`` and
``### END SOLUTION``; it runs under nbval with committed outputs. The student edition
(``notebooks/student/NN_topic.ipynb``, ``homework/hwN_topic/student.ipynb``) is made from
it, cell by cell:

- code between the markers becomes ``raise NotImplementedError("Not attempted yet: write
  the body of `name` ...")`` at the indentation of the BEGIN line, where ``name`` is the
  function or class the block sits in (:func:`decoding_gpt.checks.stub_statement`); the
  stub raises when the exercise is called, and every check turns that into
  :class:`decoding_gpt.checks.NotAttempted`, so Run All stops at the first unwritten
  exercise with its name and never prints a pass for a stub;
- lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are dropped;
- outputs, execution counts and execution timings are cleared, and the "source_hidden"
  flag that collapses reference solutions is removed (there is nothing left to hide).

The result is deterministic (same solution, same bytes), which is what lets CI check that
the committed student notebook was regenerated after every change to the solution.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from decoding_gpt.checks import stub_statement

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
MARKDOWN_STUB = "YOUR ANSWER HERE"
STUDENT_FILENAME = "student.ipynb"
LECTURE_STUDENT_DIR = "student"  # notebooks/student/NN_topic.ipynb
_DEFINITION = re.compile(r"^(\s*)(?:async\s+)?(?:def|class)\s+(\w+)")


class MarkerError(ValueError):
    """A BEGIN marker without its END marker (or the reverse) in a solution notebook."""


def enclosing_name(lines: list[str], indent: str) -> str | None:
    """The innermost ``def``/``class`` above the last of ``lines`` that encloses a line
    indented by ``indent`` (a method's stub names its class: ``Attention.forward`` reads
    worse than ``Attention`` to a student, who writes the class)."""
    names: list[str] = []
    width = len(indent)
    for line in reversed(lines):
        match = _DEFINITION.match(line)
        if match and len(match.group(1)) < width:
            names.append(match.group(2))
            width = len(match.group(1))
    return names[-1] if names else None


def _replace_blocks(lines: list[str], begin: str, end: str, stub: str | None) -> list[str]:
    """Replace every ``begin``..``end`` block (markers included) by a stub (code cells:
    the :func:`stub_statement` naming the enclosing function; markdown: ``stub``; hidden
    tests: nothing, ``stub`` None)."""
    result: list[str] = []
    inside = False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise MarkerError(f"line {number}: {begin!r} inside another block")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if stub == "code":
                result.append(indent + stub_statement(enclosing_name(result, indent)))
            elif stub is not None:
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
    stub = "code" if cell_type == "code" else MARKDOWN_STUB
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
        cell.metadata.pop("execution", None)  # timings of the instructor's run: churn only
        cell.metadata.get("jupyter", {}).pop("source_hidden", None)
        if cell.metadata.get("jupyter") == {}:
            del cell.metadata["jupyter"]
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    student.metadata.pop("widgets", None)
    return student


def student_path(instructor_path: Path) -> Path:
    """Where the student edition of ``instructor_path`` lives: ``student.ipynb`` beside a
    homework's ``solution.ipynb``, ``notebooks/student/NAME`` for ``notebooks/NAME``."""
    if instructor_path.name == "solution.ipynb":
        return instructor_path.with_name(STUDENT_FILENAME)
    return instructor_path.parent / LECTURE_STUDENT_DIR / instructor_path.name


def has_exercises(notebook: nbformat.NotebookNode) -> bool:
    """Whether any cell of ``notebook`` holds a solution block."""
    return any(BEGIN_SOLUTION in cell.source for cell in notebook.cells)


def render_student(solution_path: Path) -> str:
    """The student notebook for ``solution_path``, as the exact text to write."""
    solution = nbformat.read(solution_path, as_version=4)
    return nbformat.writes(make_student_notebook(solution)) + "\n"


def write_students(solution_paths: list[Path], *, check: bool = False) -> list[Path]:
    """Write (or with ``check``, compare) the student edition of each instructor edition
    (:func:`student_path`). Returns the student notebooks that were out of date (with
    ``check``) or rewritten."""
    changed = []
    for solution_path in solution_paths:
        target = student_path(solution_path)
        text = render_student(solution_path)
        if target.exists() and target.read_text() == text:
            continue
        changed.append(target)
        if not check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    return changed
