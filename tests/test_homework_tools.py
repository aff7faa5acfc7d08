"""make-student and the sandboxed grader, on a small synthetic homework."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import decoding_gpt.checks as checks_package
from decoding_gpt.checks import CheckError, NotAttempted, exercise, passed
from decoding_gpt.homework.grade import grade, graded_notebook
from decoding_gpt.homework.sandbox import Limits, namespaces_available
from decoding_gpt.homework.student import MarkerError, make_student_notebook, student_source
from decoding_gpt.tools.homework import main as homework_cli

ANSWER = '''def square(x):
    """Return x squared."""
    ### BEGIN SOLUTION
    return x * x
    ### END SOLUTION'''

TEST = """assert square(3) == 9, "square(3) should be 9"
### BEGIN HIDDEN TESTS
assert square(-2) == 4, "square(-2) should be 4"
### END HIDDEN TESTS"""


def _cell(source: str, **nbgrader) -> nbformat.NotebookNode:
    cell = new_code_cell(source)
    if nbgrader:
        cell.metadata["nbgrader"] = nbgrader
    return cell


def _solution() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell("# Squares\n### BEGIN SOLUTION\nIt is x*x.\n### END SOLUTION"),
            _cell(ANSWER, solution=True, grade=False, grade_id="square"),
            _cell(TEST, grade=True, solution=False, grade_id="square_test", points=3),
            _cell("assert 1 + 1 == 2", grade=True, solution=False, grade_id="free", points=1),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )


@pytest.fixture
def homework(tmp_path: Path) -> Path:
    folder = tmp_path / "hw0_squares"
    folder.mkdir()
    nbformat.write(_solution(), folder / "solution.ipynb")
    return folder


def _submission(folder: Path, answer_body: str, name: str = "submission.ipynb") -> Path:
    student = make_student_notebook(_solution())
    student.cells[1].source = f"def square(x):\n{answer_body}"
    # A student editing the visible test must not change what is graded.
    student.cells[2].source = "pass"
    path = folder.parent / name
    nbformat.write(student, path)
    return path


def test_student_source_stubs_solution_keeps_indentation():
    stub = student_source(ANSWER, "code")
    assert "return x * x" not in stub
    assert '    raise NotImplementedError("Not attempted yet: write `square` here.")' in stub
    assert stub.startswith("def square(x):")


def test_stub_names_the_class_not_the_method():
    source = (
        "class Head:\n    def forward(self, x):\n        ### BEGIN SOLUTION\n"
        "        return x\n        ### END SOLUTION\n"
    )
    assert "write `Head` here" in student_source(source, "code")
    loose = student_source("### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION", "code")
    assert "write your answer here" in loose


def test_exercise_check_refuses_a_stub_and_only_a_stub():
    @exercise
    def check_square(square):
        try:
            value = square(3)
        except Exception as err:  # a check that wraps student errors keeps the cause
            raise CheckError(f"square raised {err!r}") from err
        if value != 9:
            raise CheckError("square(3) != 9")
        passed("check_square")

    namespace: dict = {}
    exec(student_source(ANSWER, "code"), namespace)
    with pytest.raises(NotAttempted, match="write `square`"):
        check_square(namespace["square"])

    def own_error(x):
        raise NotImplementedError("my own unfinished helper")

    with pytest.raises(CheckError) as info:  # a student's own error is theirs to see
        check_square(own_error)
    assert not isinstance(info.value, NotAttempted)
    with pytest.raises(CheckError, match="!= 9"):
        check_square(lambda x: x + x)
    assert getattr(check_square, "__exercise__", False)


def test_every_public_check_is_an_exercise_check():
    for module_info in pkgutil.iter_modules(checks_package.__path__):
        module = importlib.import_module(f"decoding_gpt.checks.{module_info.name}")
        for name, function in vars(module).items():
            if name.startswith("check_") and callable(function):
                assert getattr(function, "__exercise__", False), f"{module.__name__}.{name}"


def test_student_source_drops_hidden_tests():
    visible = student_source(TEST, "code")
    assert "square(-2)" not in visible and "square(3)" in visible


def test_markdown_answers_are_replaced():
    assert "YOUR ANSWER HERE" in student_source("### BEGIN SOLUTION\nx\n### END SOLUTION", "md")


@pytest.mark.parametrize(
    "source", ["### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION", "### BEGIN HIDDEN TESTS"]
)
def test_unbalanced_markers_raise(source):
    with pytest.raises(MarkerError):
        student_source(source, "code")


def test_make_student_check_detects_stale_student_notebook(homework: Path, capsys):
    solution = str(homework / "solution.ipynb")
    assert homework_cli(["make-student", "--check", solution]) == 1  # not generated yet
    assert homework_cli(["make-student", solution]) == 0
    assert homework_cli(["make-student", "--check", solution]) == 0
    notebook = nbformat.read(solution, as_version=4)
    notebook.cells[3].source = "assert 2 + 2 == 4"
    nbformat.write(notebook, solution)
    assert homework_cli(["make-student", "--check", solution]) == 1
    student = nbformat.read(homework / "student.ipynb", as_version=4)
    assert all(cell.get("outputs", []) == [] for cell in student.cells)


def test_graded_notebook_uses_instructor_tests():
    submission = make_student_notebook(_solution())
    submission.cells[2].source = "pass"
    graded = graded_notebook(_solution(), submission)
    assert "square(-2)" in graded.cells[2].source
    assert "NotImplementedError" in graded.cells[1].source


FAST = Limits(wall_seconds=120)


@pytest.mark.slow
def test_correct_submission_gets_full_marks(homework: Path):
    report = grade(_submission(homework, "    return x ** 2"), homework / "solution.ipynb",
                   cell_timeout=30, limits=FAST)  # fmt: skip
    assert (report.total, report.max_total) == (4, 4)


@pytest.mark.slow
def test_hidden_test_catches_wrong_answer(homework: Path):
    # Right for x = 3 (the visible test), wrong for x = -2 (the hidden one).
    report = grade(_submission(homework, "    return 3 * x"), homework / "solution.ipynb",
                   cell_timeout=30, limits=FAST)  # fmt: skip
    parts = {part.grade_id: part for part in report.parts}
    assert parts["square_test"].points == 0 and "square(-2)" in parts["square_test"].error
    assert parts["free"].points == 1


@pytest.mark.slow
def test_looping_submission_times_out_and_grading_goes_on(homework: Path):
    body = "    while True:\n        pass"
    report = grade(_submission(homework, body + "\n\nsquare(1)"), homework / "solution.ipynb",
                   cell_timeout=3, limits=FAST)  # fmt: skip
    assert report.total == 1  # the independent test still ran after the timeout
    assert report.parts[0].status == "error"  # square is undefined after the interrupt


@pytest.mark.slow
@pytest.mark.skipif(not namespaces_available(), reason="needs unprivileged user namespaces")
def test_submission_cannot_delete_files_outside_its_directory(homework: Path, tmp_path: Path):
    victim = tmp_path / "gradebook.csv"
    victim.write_text("precious")
    attack = f"    import os\n    os.remove({str(victim)!r})\n    return x * x"
    report = grade(_submission(homework, attack + "\n\nsquare(1)"), homework / "solution.ipynb",
                   cell_timeout=30, limits=FAST)  # fmt: skip
    assert victim.read_text() == "precious"
    assert report.sandbox == "namespaces"
    assert "Read-only file system" in report.parts[0].error or report.parts[0].status != "ok"


@pytest.mark.slow
def test_cli_writes_json_and_csv_reports(homework: Path):
    submission = _submission(homework, "    raise ValueError('boom')", name="raises.ipynb")
    out = homework.parent / "reports" / "report.json"  # a folder that does not exist yet
    assert homework_cli(["grade", str(submission), "--solution",
                         str(homework / "solution.ipynb"), "--out", str(out),
                         "--cell-timeout", "30"]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    assert data["total"] == 1 and data["max_total"] == 4
    assert out.with_suffix(".csv").read_text().splitlines()[-1].startswith("TOTAL,1.0,4.0")
