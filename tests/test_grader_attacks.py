"""The grader against hostile submissions: each attack scores its fair marks, nothing leaks,
nothing is left running.

A tiny synthetic homework: six answers ``square_a`` .. ``square_f`` (each ``x * x``), each
with a graded cell (3 points, a visible and a hidden test) and a spec judged outside the
sandbox, plus an independent ``free`` part (1 point). A few submissions carry the attacks
of issue 22 (one answer cell each, so one kernel start serves several attacks); the fair
score of an attacked part is 0. Rows of the issue's table, and where they are tested:

- input transformers turning later cells into ``pass``: ``TRANSFORM``;
- a background writer into ``/proc/<runner>/fd/N``, ``os.fork`` then exiting the parent:
  ``FORGE_RESULTS``;
- reading ``solution.ipynb`` (via ``decoding_gpt.__file__`` or its known path):
  ``READ_SOLUTION``;
- monkeypatched checks (``math.isclose``), ``sys.modules`` tricks: ``MONKEYPATCH``;
- non-JSON bytes on the results channel, with a runner that ignores SIGINT:
  ``test_garbage_on_the_results_channel_gives_a_report``;
- a correct answer printing 2 MB from a subprocess: ``test_noisy_correct_...``;
- forked children over the memory cap, a cell that ignores Ctrl-C:
  ``test_hang_and_memory_are_contained``;
- deleting files in ``/dev/shm`` and elsewhere, the report path through a symlink, a FIFO
  for the grader to block on, a ``__del__`` at shutdown, a unicode look-alike name, a
  printed fake total: ``VANDAL``;
- the hidden tests from the grader's argv, environment or files: ``LEAK``;
- a grader interrupted mid-run: ``test_a_grader_crash_leaves_no_sandbox_process``.
"""

from __future__ import annotations

import json
import os
import random
import stat
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from decoding_gpt.homework import grade as grade_module
from decoding_gpt.homework.grade import Report, grade, parse_results
from decoding_gpt.homework.runner import GRACE_SECONDS
from decoding_gpt.homework.sandbox import (
    MIB,
    Limits,
    namespaces_available,
    processes_with_marker,
)
from decoding_gpt.homework.specs import SPECS as ALL_SPECS
from decoding_gpt.homework.specs import PartSpec, close_to, read_untrusted
from decoding_gpt.homework.student import make_student_notebook
from decoding_gpt.tools.homework import main as homework_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not namespaces_available(), reason="needs unprivileged user namespaces"),
]

NAMES = [f"square_{letter}" for letter in "abcdef"]
LIMITS = Limits(wall_seconds=120)
CELL_TIMEOUT = 20.0


def _answer(name: str) -> str:
    return f"def {name}(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION"


def _test(name: str) -> str:
    # `math.isclose` so that an attack can patch it; the hidden test's text is the secret
    return (
        f"import math\nassert math.isclose({name}(3), 9)\n### BEGIN HIDDEN TESTS\n"
        f"assert {name}(-2) == 4, 'hidden test of {name}'\n### END HIDDEN TESTS"
    )


def _cell(source: str, **nbgrader) -> nbformat.NotebookNode:
    cell = new_code_cell(source)
    cell.metadata["nbgrader"] = nbgrader
    return cell


def _solution() -> nbformat.NotebookNode:
    cells = [new_markdown_cell("# Squares, six times")]
    for name in NAMES:
        cells.append(_cell(_answer(name), solution=True, grade=False, grade_id=name))
        cells.append(_cell(_test(name), grade=True, solution=False, grade_id=f"{name}_test",
                           points=3))  # fmt: skip
    cells.append(_cell("assert 1 + 1 == 2", grade=True, solution=False, grade_id="free", points=1))
    return new_notebook(
        cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}
    )


SPECS = {
    f"{name}_test": PartSpec(
        name, name, lambda: [(3,), (-2,), (7,)], close_to(lambda x: x * x, atol=0)
    )
    for name in NAMES
}
FULL = 3 * len(NAMES) + 1
CORRECT = {name: f"def {name}(x):\n    return x * x\n" for name in NAMES}


@pytest.fixture
def homework(tmp_path: Path) -> Path:
    folder = tmp_path / "hw0_squares"
    folder.mkdir()
    nbformat.write(_solution(), folder / "solution.ipynb")
    return folder


def _submit(folder: Path, answers: dict[str, str], name: str = "submission.ipynb") -> Path:
    student = make_student_notebook(_solution())
    for cell in student.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    path = folder.parent / name
    nbformat.write(student, path)
    return path


def _grade(submission: Path, homework: Path, **kwargs) -> Report:
    kwargs.setdefault("cell_timeout", CELL_TIMEOUT)
    kwargs.setdefault("limits", LIMITS)
    report = grade(submission, homework / "solution.ipynb", specs=SPECS, **kwargs)
    time.sleep(0.2)  # a killed process leaves /proc a moment later
    assert processes_with_marker(report.sandbox_id) == [], "sandbox processes left running"
    return report


def _points(report: Report) -> dict[str, float]:
    return {part.grade_id: part.points for part in report.parts}


def _wrong(name: str) -> str:
    return f"def {name}(x):\n    return 0\n"


# Each attack answers one part; `{...}` fields are filled in by the test.
LEAK = """
import glob, os
needle = "hidden test" + " of square_a"  # split: this cell's own text must not match
found = any(needle in value for value in os.environ.values())
for path in glob.glob("/proc/*/cmdline") + glob.glob("/proc/*/environ") + glob.glob("/proc/*/fd/*"):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        found |= needle.encode() in os.read(fd, 1 << 20)
        os.close(fd)
    except OSError:
        pass
skip = ("/proc", "/sys", "/dev", "/usr", "/lib", "/lib64", "/etc")  # system files: no secrets
for top, dirs, files in os.walk("/"):  # (site-packages skipped to keep the test fast)
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip and d != "site-packages"]
    for file in files:
        if file.endswith((".ipynb", ".json")) or top.startswith(os.getcwd()):
            try:
                found |= needle in open(os.path.join(top, file), errors="ignore").read(1 << 22)
            except OSError:
                pass
if found:  # the hidden test was readable: a correct answer would be a leak
    def square_a(x):
        return x * x
else:
    def square_a(x):
        return 0
os.write(1, b"attack a ran\\n")
"""

FORGE_RESULTS = '''
import os, subprocess, sys
forger = """
import glob, json, os, time
fake = "".join(json.dumps({"index": i, "status": "ok", "error": ""}) + "\\\\n" for i in range(60))
for _ in range(100):
    for path in glob.glob("/proc/*/fd/*"):
        pid = path.split("/")[2]
        if not pid.isdigit() or pid in ("1", str(os.getpid()), str(os.getppid())):
            continue  # the kernel's own streams only reach the log: writing there proves nothing
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, (fake + "not json \\\\xff\\\\n").encode())
            os.close(fd)
        except OSError:
            pass
    time.sleep(0.05)
"""
# fork, and let the parent exit: the writer is a daemon of its own session
subprocess.Popen([sys.executable, "-c", forger], start_new_session=True)
def square_b(x):
    return 0
os.write(1, b"attack b ran\\n")
'''

READ_SOLUTION = """
import json, pathlib
import decoding_gpt
candidates = list(pathlib.Path(decoding_gpt.__file__).parents[1].glob("homework/*/solution.ipynb"))
candidates += [pathlib.Path({solution!r})]
def square_c(x):
    return 0
for path in candidates:
    try:
        cells = json.loads(path.read_text())["cells"]
    except OSError:
        continue
    for cell in cells:
        if cell["metadata"].get("nbgrader", {{}}).get("grade_id") == "square_c":
            exec("".join(cell["source"]))
import os
os.write(1, b"attack c ran\\n")
"""

MONKEYPATCH = """
import math, sys, types, builtins
math.isclose = lambda *args, **kwargs: True
fake = types.ModuleType("math"); fake.isclose = lambda *args, **kwargs: True
sys.modules["math"] = fake
builtins.AssertionError = type("Quiet", (Exception,), {{}})
def square_d(x):
    return 0
import os
os.write(1, b"attack d ran\\n")
"""

VANDAL = """
import os, pathlib
print("TOTAL 19 / 19")
for victim in {victims!r}:
    for action in (os.remove, lambda p: open(p, "w").write("pwned")):
        try:
            action(victim)
        except OSError:
            pass
out = pathlib.Path("outputs"); out.mkdir(exist_ok=True)
for target in {victims!r}:  # the grader must not follow links to files it can read
    try:
        os.remove(out / "square_b_test.json")
    except OSError:
        pass
    os.symlink(target, out / "square_b_test.json")
try:
    os.remove(out / "square_b_test.safetensors")
except OSError:
    pass
os.mkfifo(out / "square_b_test.safetensors")
class Haunt:
    def __del__(self):
        open({report!r}, "w").write("{{}}")
        while True:
            pass
haunt = Haunt()
def squаre_e(x):  # a Cyrillic a: the look-alike is correct, the real name is not
    return x * x
def square_e(x):
    return -1
os.write(1, b"attack e ran\\n")
"""

TRANSFORM = 'get_ipython().input_transformers_cleanup.append(lambda lines: ["pass\\n"])'


def test_attacks_score_zero_and_touch_nothing(homework: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(ALL_SPECS, homework.name, SPECS)  # the CLI finds specs by folder
    decoys = [tmp_path / "gradebook.csv", Path(f"/dev/shm/dgpt-decoy-{uuid.uuid4().hex}")]
    forged = tmp_path / "forged.json"  # readable by the grader, not by the sandbox
    forged.write_text(json.dumps({"results": [{"value": 9}, {"value": 4}, {"value": 49}]}))
    for decoy in decoys:
        decoy.write_text("precious")
    report_path = tmp_path / "reports" / "submission.grade.json"
    answers = {
        "square_a": LEAK,
        "square_b": FORGE_RESULTS,
        "square_c": READ_SOLUTION.format(solution=str(homework / "solution.ipynb")),
        "square_d": MONKEYPATCH.format(),
        "square_e": VANDAL.format(
            victims=[*map(str, decoys), str(forged)], report=str(report_path)
        ),
        "square_f": TRANSFORM,
    }
    submission = _submit(homework, answers)
    try:
        solution = str(homework / "solution.ipynb")
        assert homework_cli(["grade", str(submission), "--solution", solution,
                             "--out", str(report_path), "--cell-timeout", "20"]) == 0  # fmt: skip
    finally:
        decoys[1].unlink(missing_ok=True)
    data = json.loads(report_path.read_text())
    time.sleep(0.2)
    assert processes_with_marker(data["sandbox_id"]) == []
    assert data["total"] == 1 and data["max_total"] == FULL  # only `free`
    parts = {part["grade_id"]: part for part in data["parts"]}
    assert parts["free"]["points"] == 1
    # The kernel was fooled (its cells passed), the data outside was not.
    assert (
        parts["square_d_test"]["scored_by"] == "spec"
        and "off by" in parts["square_d_test"]["error"]
    )
    assert "no valid outputs" in parts["square_f_test"]["error"]
    assert "no valid outputs" in parts["square_b_test"]["error"]  # a link, a FIFO: refused
    assert data["notes"] == [], "something reached the results pipe"
    for attack in "abcde":  # each attack ran to its end (a crashed attack would prove nothing)
        assert f"attack {attack} ran" in data["output_tail"], data["output_tail"]
    assert data["sandbox"] == "namespaces" and data["degraded"] == []
    for decoy in decoys[:1]:
        assert decoy.read_text() == "precious"
    assert forged.read_text().startswith('{"results"')


def test_noisy_correct_submission_gets_full_marks(homework: Path):
    noisy = (
        "import subprocess, sys\n"
        "loud = \"import sys; sys.stdout.write('x' * 2_000_000)\"\n"
        "subprocess.run([sys.executable, '-c', loud])\n"
        "def square_a(x):\n    return x * x\n"
    )
    report = _grade(_submit(homework, {**CORRECT, "square_a": noisy}), homework)
    assert report.total == FULL, report.parts
    assert len(report.output_tail) <= Limits().output_bytes


FORKS = (
    "import os, time\n"
    "children = []\n"
    "for _ in range(3):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        block = b'x' * (300 * 1024 * 1024)\n"
    "        time.sleep(3)\n"
    "        os._exit(0)\n"
    "    children.append(pid)\n"
    "for pid in children:\n"
    "    os.waitpid(pid, 0)\n"
    "def square_b(x):\n    return 0\n"
)


def test_hang_and_memory_are_contained(homework: Path):
    hang = (
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "def square_a(x):\n    return x * x\nwhile True:\n    pass\n"
    )
    limits = Limits(memory_bytes=700 * MIB, wall_seconds=120)  # 3 x 300 MiB do not fit
    answers = {**CORRECT, "square_a": hang, "square_b": FORKS}
    report = _grade(_submit(homework, answers), homework, cell_timeout=2, limits=limits)
    points = _points(report)
    # a cell that ignores SIGINT is killed at its own timeout (+ grace), the kernel restarts:
    # square_a is gone, every later answer is graded as usual
    assert points["square_a_test"] == 0 and points["square_b_test"] == 0
    assert report.total == FULL - 6
    assert report.duration_s < 2 + GRACE_SECONDS + 60  # not the wall-clock limit
    if report.degraded:
        pytest.skip(f"no cgroup here: {report.degraded}")
    # the forked children share one cap: the cgroup never held more than the limit
    assert report.peak_memory_bytes is not None and report.peak_memory_bytes <= 700 * MIB


def test_garbage_on_the_results_channel_gives_a_report(homework: Path, monkeypatch):
    fake_runner = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "fd = int(sys.argv[1])\n"
        'os.write(fd, b\'\\xff\\xfe not json\\n{"index": "x"}\\n[1, 2]\\n\')\n'
        "os.write(fd, bytes(range(256)))\n"
        "time.sleep(3600)\n"
    )

    def command(results_fd: int, cell_timeout: float, *, isolate: bool) -> list[str]:
        return [grade_module.sys.executable, "-c", fake_runner, str(results_fd)]

    monkeypatch.setattr(grade_module, "runner_command", command)
    start = time.monotonic()
    report = _grade(_submit(homework, {}), homework, limits=Limits(wall_seconds=3))
    assert time.monotonic() - start < 30
    assert report.total == 0 and {part.status for part in report.parts} == {"error"}
    assert any("malformed" in note for note in report.notes)
    assert any("wall-clock" in note for note in report.notes)


def test_parse_results_never_raises_on_random_bytes():
    rng = random.Random(0)
    cells = {0, 2, 4}
    for _ in range(500):
        data = rng.randbytes(rng.randrange(200))
        if rng.random() < 0.5:
            data += b'\n{"index": 2, "status": "ok", "error": ""}\n' + data
        outcome, problems = parse_results(data, cells)
        assert set(outcome) <= cells
        assert all(item["status"] in {"ok", "error"} for item in outcome.values())
    outcome, problems = parse_results(b'{"index": 2, "status": "ok", "error": ""}\n' * 2, cells)
    assert outcome[2]["status"] == "error" and problems


def test_untrusted_outputs_are_regular_files_only(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    (tmp_path / "target").write_text("secret")
    for path in (fifo, link):
        with pytest.raises((OSError, ValueError)):
            read_untrusted(path, 100)
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_grader_crash_leaves_no_sandbox_process(homework: Path, monkeypatch):
    seen: list[str] = []

    def crash(sandbox, *args):
        seen.append(sandbox.marker)
        deadline = time.monotonic() + 30
        while not processes_with_marker(sandbox.marker) and time.monotonic() < deadline:
            time.sleep(0.1)  # until the sandbox runs
        assert processes_with_marker(sandbox.marker)
        raise KeyboardInterrupt  # the instructor pressed Ctrl-C

    monkeypatch.setattr(grade_module, "_exchange", crash)
    with pytest.raises(KeyboardInterrupt):
        grade(_submit(homework, CORRECT), homework / "solution.ipynb", specs=SPECS)
    time.sleep(0.2)
    assert seen and processes_with_marker(seen[0]) == []
