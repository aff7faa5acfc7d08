"""Grade a submitted homework notebook against its solution notebook.

The graded notebook is the SOLUTION notebook with each answer cell (nbgrader metadata
``solution: true``) replaced by the submission's cell of the same ``grade_id``. So the
tests that run are the instructor's, hidden tests included, whatever the student did to
their copy; only the answers are the student's. A graded cell (``grade: true``) earns its
``points`` if it runs without an exception, else 0, with the error in the report.

The notebook runs in :mod:`decoding_gpt.homework.sandbox` through
:mod:`decoding_gpt.homework.runner`, with a per-cell timeout, so a submission that raises,
loops forever, eats memory or deletes files costs its own points and nothing else.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from decoding_gpt.homework.sandbox import Limits, run_sandboxed

SKIP_ON_COPY = {"solution.ipynb", "student.ipynb", ".ipynb_checkpoints", "__pycache__"}


@dataclass
class PartScore:
    grade_id: str
    points: float
    max_points: float
    status: str  # ok | error | timeout | dead-kernel | not-run
    error: str = ""


@dataclass
class Report:
    submission: str
    solution: str
    sandbox: str
    duration_s: float
    parts: list[PartScore] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(part.points for part in self.parts)

    @property
    def max_total(self) -> float:
        return sum(part.max_points for part in self.parts)

    def to_json(self) -> str:
        data = asdict(self) | {"total": self.total, "max_total": self.max_total}
        return json.dumps(data, indent=2)

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["grade_id", "points", "max_points", "status", "error"])
            for part in self.parts:
                writer.writerow(
                    [part.grade_id, part.points, part.max_points, part.status, part.error]
                )
            writer.writerow(["TOTAL", self.total, self.max_total, "", ""])


def _nbgrader(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def graded_notebook(
    solution: nbformat.NotebookNode, submission: nbformat.NotebookNode
) -> nbformat.NotebookNode:
    """The solution notebook with its answer cells taken from the submission."""
    answers = {
        _nbgrader(cell)["grade_id"]: cell.source
        for cell in submission.cells
        if _nbgrader(cell).get("solution") and "grade_id" in _nbgrader(cell)
    }
    graded = nbformat.v4.new_notebook(metadata=solution.metadata)
    for cell in solution.cells:
        cell = nbformat.from_dict(json.loads(json.dumps(cell)))
        meta = _nbgrader(cell)
        if meta.get("solution"):
            # A missing answer cell counts as an unanswered one.
            cell.source = answers.get(meta["grade_id"], 'raise NotImplementedError("missing")')
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        graded.cells.append(cell)
    return graded


def _read_results(process: subprocess.Popen, read_fd: int, wall_seconds: float) -> list[dict]:
    """Collect the runner's JSON lines until it exits or the wall-clock limit passes."""
    results: list[dict] = []
    buffer = b""
    os.set_blocking(read_fd, False)
    deadline = time.monotonic() + wall_seconds
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            results.extend(json.loads(line) for line in lines if line.strip())
            continue
        if chunk == b"" and process.poll() is not None:
            return results
        if time.monotonic() > deadline:
            process.kill()  # kills the namespace's init, and with it every process inside
            process.wait()
            return results
        time.sleep(0.05)


def grade(
    submission_path: Path,
    solution_path: Path,
    *,
    cell_timeout: int = 300,
    limits: Limits | None = None,
) -> Report:
    """Execute ``submission_path`` against ``solution_path`` in the sandbox; score it."""
    limits = limits or Limits()
    solution = nbformat.read(solution_path, as_version=4)
    submission = nbformat.read(submission_path, as_version=4)
    notebook = graded_notebook(solution, submission)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dgpt-grade-") as tmp:
        workdir = Path(tmp)
        for item in solution_path.parent.iterdir():  # data files the homework reads
            if item.name not in SKIP_ON_COPY:
                copy = shutil.copytree if item.is_dir() else shutil.copy2
                copy(item, workdir / item.name)
        nbformat.write(notebook, workdir / "graded.ipynb")
        read_fd, write_fd = os.pipe()
        command = [
            sys.executable, "-m", "decoding_gpt.homework.runner", "graded.ipynb",
            "--results-fd", str(write_fd), "--cell-timeout", str(cell_timeout),
        ]  # fmt: skip
        process, kind = run_sandboxed(command, workdir, limits, pass_fds=[write_fd])
        os.close(write_fd)
        try:
            results = _read_results(process, read_fd, limits.wall_seconds)
        finally:
            os.close(read_fd)
            if process.stdout:
                process.stdout.close()
    outcome = {result["index"]: result for result in results}
    report = Report(str(submission_path), str(solution_path), kind, time.monotonic() - start)
    for index, cell in enumerate(notebook.cells):
        meta = _nbgrader(cell)
        if not meta.get("grade"):
            continue
        result = outcome.get(index, {"status": "not-run", "error": "not reached"})
        max_points = float(meta.get("points", 0))
        points = max_points if result["status"] == "ok" else 0.0
        report.parts.append(
            PartScore(meta["grade_id"], points, max_points, result["status"], result["error"])
        )
    return report
