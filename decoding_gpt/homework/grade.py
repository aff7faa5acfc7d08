"""Grade a submitted homework notebook against its solution notebook.

The graded notebook is the SOLUTION notebook with each answer cell (nbgrader metadata
``solution: true``) replaced by the submission's cell of the same ``grade_id``: the cells
that run are the instructor's, hidden tests included, whatever the student did to their
copy; only the answers are the student's.

Two ways a graded part (``grade: true``, worth ``points``) is scored:

- **By spec, outside the sandbox** (:mod:`decoding_gpt.homework.specs`): where the homework
  has a spec for the part, the grader writes the inputs, the sandboxed kernel runs the
  student's function on them and writes only the outputs, as safetensors/JSON, and the
  grader compares them with its own reference computation. The graded cell's own outcome
  is ignored: nothing the submission does to its interpreter, IPython, torch or the check
  modules changes such a score.
- **By the notebook, inside the sandbox** (parts without a spec): the part earns its points
  if its cell runs without an exception. The report marks these parts ``in-kernel``: a
  submission that tampers with its own kernel can fake them.

The notebook runs in :mod:`decoding_gpt.homework.sandbox` through
:mod:`decoding_gpt.homework.runner`. Whatever comes back (results, outputs, stdout) is read
with caps and validated; a malformed answer marks the part "error", never crashes the
grader, and on every exit path the sandbox's processes are killed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import selectors
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from decoding_gpt.homework.sandbox import Limits, Sandbox, namespaces_available, sandboxed
from decoding_gpt.homework.specs import (
    OUTPUTS_DIR,
    REQUIRES,
    SPECS,
    PartSpec,
    call_source,
    judge_part,
    write_inputs,
)

DEFAULT_CELL_TIMEOUT = 300.0  # seconds; a training cell on a busy 2-core machine needs it
SKIP_ON_COPY = {"solution.ipynb", "student.ipynb", ".ipynb_checkpoints", "__pycache__"}
STATUSES = {"ok", "error", "timeout", "dead-kernel"}
RESULTS_CAP = 1024**2  # bytes of JSON lines the runner may send (a few hundred cells' worth)
CHUNK = 65536


@dataclass
class PartScore:
    grade_id: str
    points: float
    max_points: float
    status: str  # ok | error | timeout | dead-kernel | not-run
    error: str = ""
    scored_by: str = "in-kernel"  # "spec" (outside the sandbox) or "in-kernel"


@dataclass
class Report:
    submission: str
    solution: str
    sandbox: str
    duration_s: float
    sandbox_id: str = ""  # in the environment of each sandboxed process
    parts: list[PartScore] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)  # protections missing on this machine
    notes: list[str] = field(default_factory=list)  # malformed data from the sandbox, limits hit
    output_tail: str = ""  # the end of the sandbox's stdout/stderr
    peak_memory_bytes: int | None = None  # the whole sandbox's, where a cgroup measured it

    @property
    def total(self) -> float:
        return sum(part.points for part in self.parts)

    @property
    def max_total(self) -> float:
        return sum(part.max_points for part in self.parts)

    def to_dict(self) -> dict:
        return asdict(self) | {"total": self.total, "max_total": self.max_total}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["grade_id", "points", "max_points", "status", "error", "scored_by"])
            for part in self.parts:
                writer.writerow(
                    [part.grade_id, part.points, part.max_points, part.status, part.error,
                     part.scored_by]
                )  # fmt: skip
            writer.writerow(["TOTAL", self.total, self.max_total, "", "", ""])


def _nbgrader(cell: nbformat.NotebookNode) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def graded_notebook(
    solution: nbformat.NotebookNode, submission: nbformat.NotebookNode
) -> nbformat.NotebookNode:
    """The solution notebook with its answer cells taken from the submission."""
    answers = {}
    for cell in submission.get("cells", []):
        meta = _nbgrader(cell)
        if meta.get("solution") and isinstance(meta.get("grade_id"), str):
            source = cell.get("source", "")
            answers[meta["grade_id"]] = source if isinstance(source, str) else "".join(source)
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


def _with_spec_calls(notebook: nbformat.NotebookNode, specs: dict[str, PartSpec]) -> None:
    """Append, after each answer cell, a code cell that runs the student's code on the inputs.

    The call cell sits right after the answer (before any later cell can redefine the name);
    it is an ordinary cell of the graded notebook, so a timeout there is the student's.
    """
    by_answer: dict[str, list[str]] = {}
    for grade_id, spec in specs.items():
        by_answer.setdefault(spec.answer_id, []).append(grade_id)
    cells = []
    for cell in notebook.cells:
        cells.append(cell)
        for grade_id in by_answer.get(_nbgrader(cell).get("grade_id", ""), []):
            cells.append(nbformat.v4.new_code_cell(call_source(grade_id, specs[grade_id])))
    notebook.cells = cells


@dataclass
class Exchange:
    """What came back from the sandbox: the runner's results and the end of its output."""

    results: bytes = b""
    output: bytearray = field(default_factory=bytearray)
    notes: list[str] = field(default_factory=list)


def _exchange(
    sandbox: Sandbox, stdin_fd: int, payload: bytes, results_fd: int, limits: Limits
) -> Exchange:
    """Feed the notebook, drain stdout and the results pipe (capped) until the runner exits."""
    got = Exchange()
    assert sandbox.process.stdout is not None
    channels = {results_fd: "results", sandbox.process.stdout.fileno(): "output"}
    selector = selectors.DefaultSelector()
    for fd in (stdin_fd, *channels):
        os.set_blocking(fd, False)
    selector.register(stdin_fd, selectors.EVENT_WRITE, "stdin")
    for fd, name in channels.items():
        selector.register(fd, selectors.EVENT_READ, name)
    results = bytearray()
    deadline = time.monotonic() + limits.wall_seconds
    while selector.get_map():
        if time.monotonic() > deadline:
            got.notes.append(f"wall-clock limit of {limits.wall_seconds:g} s reached")
            break
        if sandbox.process.poll() is not None and "results" not in {
            key.data for key in selector.get_map().values()
        }:
            break
        for key, _ in selector.select(timeout=0.2):
            if key.data == "stdin":
                payload = _write_some(key.fd, payload)
                if not payload:
                    selector.unregister(key.fd)
                    os.close(key.fd)
                continue
            chunk = _read_some(key.fd)
            if chunk is None:
                continue
            if not chunk:
                selector.unregister(key.fd)
            elif key.data == "results":
                if len(results) + len(chunk) > RESULTS_CAP:
                    got.notes.append("the results channel sent more than 1 MiB: truncated")
                results += chunk[: max(RESULTS_CAP - len(results), 0)]
            else:
                got.output += chunk
                del got.output[: max(len(got.output) - limits.output_bytes, 0)]
    with contextlib.suppress(KeyError, ValueError, OSError):
        if selector.get_key(stdin_fd):
            os.close(stdin_fd)
    selector.close()
    got.results = bytes(results)
    return got


def _write_some(fd: int, payload: bytes) -> bytes:
    try:
        return payload[os.write(fd, payload[:CHUNK]) :]
    except BlockingIOError:
        return payload
    except BrokenPipeError:  # the runner died before reading its notebook
        return b""


def _read_some(fd: int) -> bytes | None:
    try:
        return os.read(fd, CHUNK)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def parse_results(data: bytes, code_cells: set[int]) -> tuple[dict[int, dict], list[str]]:
    """Validate the runner's JSON lines: ``{index: {"status", "error"}}`` and what was wrong.

    Anything else (not UTF-8, not JSON, another shape, an unknown cell, a repeated cell)
    is reported, never raised; a repeated cell counts as an error for that cell.
    """
    outcome: dict[int, dict] = {}
    problems: list[str] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line.decode("utf-8"))
            index, status, error = item["index"], item["status"], item["error"]
            if type(index) is not int or status not in STATUSES or not isinstance(error, str):
                raise ValueError("unexpected fields")
            if index not in code_cells:
                raise ValueError(f"no code cell {index}")
        except (ValueError, KeyError, TypeError) as err:
            problems.append(f"results line {number} is malformed: {str(err)[:100]}")
            continue
        if index in outcome:
            problems.append(f"results line {number} repeats cell {index}")
            outcome[index] = {"status": "error", "error": "the sandbox sent two results"}
            continue
        outcome[index] = {"status": status, "error": error[:500]}
    return outcome, problems


def _copy_data(solution_path: Path, workdir: Path) -> None:
    """Copy the data files the homework reads (never the notebooks) into the working dir."""
    for item in solution_path.parent.iterdir():
        if item.name in SKIP_ON_COPY or item.suffix == ".ipynb":
            continue
        if item.is_dir():
            shutil.copytree(item, workdir / item.name, symlinks=True)
        else:
            shutil.copy2(item, workdir / item.name, follow_symlinks=False)


def runner_command(results_fd: int, cell_timeout: float, *, isolate: bool) -> list[str]:
    """The command the sandbox runs: :mod:`decoding_gpt.homework.runner`, notebook on stdin."""
    return [
        sys.executable, "-m", "decoding_gpt.homework.runner", "--results-fd", str(results_fd),
        "--cell-timeout", str(cell_timeout), *(["--isolate-kernel"] if isolate else []),
    ]  # fmt: skip


def _run_notebook(
    notebook: nbformat.NotebookNode, workdir: Path, cell_timeout: float, limits: Limits
) -> tuple[Exchange, Sandbox]:
    """Execute ``notebook`` in the sandbox (in ``workdir``); what came back."""
    results_r, results_w = os.pipe()
    stdin_r, stdin_w = os.pipe()
    kind = "namespaces" if namespaces_available() else "rlimits-only"
    command = runner_command(results_w, cell_timeout, isolate=kind == "namespaces")
    try:
        with sandboxed(
            command, workdir, limits, pass_fds=[results_w], stdin=stdin_r, kind=kind
        ) as sandbox:
            os.close(results_w)
            os.close(stdin_r)
            results_w = stdin_r = -1
            payload = nbformat.writes(notebook).encode()
            exchange = _exchange(sandbox, stdin_w, payload, results_r, limits)
            stdin_w = -1
    finally:
        for fd in (results_r, results_w, stdin_r, stdin_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
    return exchange, sandbox


def grade(
    submission_path: Path,
    solution_path: Path,
    *,
    cell_timeout: float = DEFAULT_CELL_TIMEOUT,
    limits: Limits | None = None,
    specs: dict[str, PartSpec] | None = None,
    requires: dict[str, tuple[str, ...]] | None = None,
) -> Report:
    """Execute ``submission_path`` against ``solution_path`` in the sandbox; score it.

    ``specs`` (grade_id -> :class:`PartSpec`) score those parts outside the sandbox;
    ``requires`` (grade_id -> grade_ids) makes an in-kernel part count only if those parts
    passed. The defaults are the homework's tables in :mod:`decoding_gpt.homework.specs`
    (``SPECS``, ``REQUIRES``), looked up by the solution's folder name.
    """
    limits = limits or Limits()
    solution = nbformat.read(solution_path, as_version=4)
    report = Report(str(submission_path), str(solution_path), "none", 0.0)
    try:
        submission = nbformat.read(submission_path, as_version=4)
    except Exception as err:  # any unreadable file is the student's zero, not a crash
        reason = f"unreadable submission: {type(err).__name__}: {str(err)[:200]}"
        report.notes.append(reason)
        _score_parts(report, solution, {}, {}, garbled=True)
        return report
    folder = solution_path.resolve().parent.name
    specs = SPECS.get(folder, {}) if specs is None else specs
    requires = REQUIRES.get(folder, {}) if requires is None else requires
    notebook = graded_notebook(solution, submission)
    sources = {
        str(_nbgrader(cell).get("grade_id")): cell.source
        for cell in notebook.cells
        if _nbgrader(cell).get("solution")
    }
    _with_spec_calls(notebook, specs)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dgpt-grade-") as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        _copy_data(solution_path, workdir)
        cases = write_inputs(specs, workdir)
        exchange, sandbox = _run_notebook(notebook, workdir, cell_timeout, limits)
        outputs = workdir / OUTPUTS_DIR
        spec_scores = {
            grade_id: judge_part(
                spec, cases[grade_id], outputs, grade_id, sources.get(spec.answer_id, "")
            )
            for grade_id, spec in specs.items()
        }
    report.sandbox, report.degraded = sandbox.kind, sandbox.degraded
    report.sandbox_id = sandbox.marker
    report.peak_memory_bytes = sandbox.peak_memory
    report.duration_s = time.monotonic() - start
    report.output_tail = exchange.output.decode("utf-8", "replace")
    code_cells = {i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    outcome, problems = parse_results(exchange.results, code_cells)
    report.notes += exchange.notes + problems
    _score_parts(report, notebook, outcome, spec_scores, bool(problems))
    _apply_requires(report, requires)
    return report


def _apply_requires(report: Report, requires: dict[str, tuple[str, ...]]) -> None:
    """Zero an in-kernel part whose required (spec'd) parts did not all pass."""
    passed = {part.grade_id for part in report.parts if part.status == "ok"}
    for part in report.parts:
        missing = [
            grade_id for grade_id in requires.get(part.grade_id, ()) if grade_id not in passed
        ]
        if part.status == "ok" and missing:
            part.points, part.status = 0.0, "error"
            part.error = f"needs {', '.join(missing)} to pass first"


def _score_parts(
    report: Report,
    notebook: nbformat.NotebookNode,
    outcome: dict[int, dict],
    spec_scores: dict[str, tuple[bool, str]],
    garbled: bool,
) -> None:
    missing = (
        {"status": "error", "error": "no valid result from the sandbox"}
        if garbled
        else {"status": "not-run", "error": "not reached"}
    )
    for index, cell in enumerate(notebook.cells):
        meta = _nbgrader(cell)
        if not meta.get("grade"):
            continue
        grade_id, max_points = str(meta.get("grade_id")), float(meta.get("points", 0))
        result = outcome.get(index, missing)
        status, message, scored_by = result["status"], result["error"], "in-kernel"
        if grade_id in spec_scores:  # the data decides; the cell's tests must pass too
            spec_ok, spec_message = spec_scores[grade_id]
            scored_by = "spec"
            if not spec_ok:
                status, message = "error", spec_message
        ok = status == "ok"
        points = max_points if ok else 0.0
        report.parts.append(PartScore(grade_id, points, max_points, status, message, scored_by))
