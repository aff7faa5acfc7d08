"""make-student and the sandboxed grader, on a small synthetic homework."""

from __future__ import annotations

import ast
import importlib
import json
import math
import pkgutil
import time
from pathlib import Path

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import decoding_gpt.checks as checks_package
from decoding_gpt.checks import CheckError, NotAttempted, exercise, hw4, passed
from decoding_gpt.homework import grade as grade_module
from decoding_gpt.homework.grade import DEFAULT_CELL_TIMEOUT, grade, graded_notebook
from decoding_gpt.homework.runner import GRACE_SECONDS
from decoding_gpt.homework.sandbox import Limits, namespaces_available, processes_with_marker
from decoding_gpt.homework.specs import (
    SPECS,
    Config,
    LogitDiffMetric,
    Model,
    ModuleCase,
    Seed,
    Shipped,
    TrainCase,
    forbidden_names,
    write_inputs,
)
from decoding_gpt.homework.student import MarkerError, make_student_notebook, student_source
from decoding_gpt.probes import fit_logistic_probe
from decoding_gpt.tools.homework import main as homework_cli
from decoding_gpt.training import sample_batch
from decoding_gpt.transformer import GPT, GPTConfig, next_token_loss

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
    assert report.parts[0].status == "timeout"  # the graded cell calls square: it loops too


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


def test_readme_defaults_are_the_code_defaults():
    """homework/README.md's table of defaults quotes the values the grader uses."""
    readme = (Path(__file__).resolve().parents[1] / "homework" / "README.md").read_text()
    table = readme.split("### Defaults", 1)[1]
    rows = {
        cells[0]: cells[-1]
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("|---")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    defaults = Limits()
    assert rows["time per cell"] == f"{DEFAULT_CELL_TIMEOUT:g} s"
    assert rows["grace after SIGINT before SIGKILL"] == f"{GRACE_SECONDS:g} s"
    assert rows["time per submission"] == f"{defaults.wall_seconds:g} s"
    memory_row = "memory of the whole sandbox (and each process's address space)"
    assert rows[memory_row] == f"{defaults.memory_bytes / 1024**3:g} GiB"
    assert defaults.address_space_bytes == defaults.memory_bytes
    assert rows["tasks (processes and threads) in the sandbox"] == str(defaults.max_processes)
    assert rows["size of one file written"] == f"{defaults.file_size_bytes // 1024**2} MiB"
    assert rows["output kept in the report"] == f"{defaults.output_bytes // 1024} KiB"


@pytest.mark.slow
def test_grade_class_writes_a_gradebook_and_feedback(homework: Path):
    folder = homework.parent / "submissions"
    folder.mkdir()
    _submission(homework, "    return x ** 2", name="submissions/alice.ipynb")
    _submission(homework, "    raise ValueError('boom')", name="submissions/bob.ipynb")
    (folder / "carol.ipynb").write_bytes(b"\xff not a notebook")  # a report, not a crash
    out = homework.parent / "grades"
    assert homework_cli(["grade-class", str(folder), "--solution",
                         str(homework / "solution.ipynb"), "--out", str(out),
                         "--workers", "2", "--cell-timeout", "30"]) == 0  # fmt: skip
    rows = (out / "gradebook.csv").read_text().splitlines()
    assert rows[0].startswith("submission,square_test,free,total,max_total")
    totals = {row.split(",")[0]: row.split(",")[3] for row in rows[1:]}
    assert totals == {"alice.ipynb": "4.0", "bob.ipynb": "1.0", "carol.ipynb": "0.0"}
    assert "boom" in (out / "bob.feedback.txt").read_text()
    assert "unreadable" in (out / "carol.feedback.txt").read_text()
    assert len(json.loads((out / "gradebook.json").read_text())) == 3


@pytest.mark.slow
def test_without_namespaces_the_report_says_degraded(homework: Path, monkeypatch):
    monkeypatch.setattr(grade_module, "namespaces_available", lambda: False)
    report = grade(_submission(homework, "    return x ** 2"), homework / "solution.ipynb",
                   cell_timeout=30, limits=FAST)  # fmt: skip
    assert (report.total, report.sandbox) == (4, "rlimits-only")
    assert any("no unprivileged user namespaces" in why for why in report.degraded)
    time.sleep(0.2)
    assert processes_with_marker(report.sandbox_id) == []


def _run_case(fn, case: tuple):
    """What the sandbox's harness does with one case, in this process (trusted code only)."""

    def decode(value):
        if isinstance(value, Seed):
            return torch.Generator().manual_seed(value.seed)
        if isinstance(value, Config):
            return GPTConfig(**value.kwargs)
        if isinstance(value, Shipped):
            return value.build()
        if isinstance(value, LogitDiffMetric):
            return value.build()
        if isinstance(value, Model):
            model = GPT(GPTConfig(**value.config.kwargs))
            model.load_state_dict(value.state)
            return model.eval()
        return value

    if isinstance(value := case[0], TrainCase):
        args = [decode(arg) for arg in value.args]
        return {"value": fn(*args), "state": args[0].state_dict()}
    if len(case) == 1 and isinstance(case[0], ModuleCase):
        module = fn(*map(decode, case[0].args))
        module.load_state_dict(case[0].state, strict=True)
        with torch.no_grad():
            return module.eval()(*case[0].inputs)
    return fn(*map(decode, case))


def _answers(solution: Path) -> dict:
    """The imports, functions and classes of a solution notebook's ungraded code cells."""
    kept = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    namespace: dict = {}
    for cell in nbformat.read(solution, as_version=4).cells:
        if cell.cell_type != "code" or cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
            continue
        lines = [line for line in cell.source.splitlines() if not line.startswith("%")]
        tree = ast.parse("\n".join(lines))
        tree.body = [node for node in tree.body if isinstance(node, kept)]
        exec(compile(tree, str(solution), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("folder", sorted(SPECS))
def test_solutions_pass_their_specs(folder: str):
    solution = Path(__file__).resolve().parents[1] / "homework" / folder / "solution.ipynb"
    namespace = _answers(solution)
    cells = nbformat.read(solution, as_version=4).cells
    sources = {
        cell.metadata["nbgrader"]["grade_id"]: cell.source
        for cell in cells
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution")
    }
    for grade_id, spec in SPECS[folder].items():
        cases = spec.cases()
        outputs = [_run_case(namespace[spec.function], case) for case in cases]
        assert spec.judge(cases, outputs) is None, grade_id
        assert forbidden_names(sources[spec.answer_id], spec.banned) == [], grade_id


@pytest.mark.parametrize("folder", sorted(SPECS))
def test_spec_inputs_do_not_depend_on_the_global_rng(
    folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``grade-class`` grades in threads: a case builder that seeds torch's global RNG
    can be disturbed by another thread between its seed and its draws, and then the judge
    compares a student's run against other weights (a genuine hw3 ``train`` scored 0 that
    way). So no builder seeds the global RNG, and the inputs are the same bytes whatever
    its state."""

    def no_global_seed(seed: int) -> None:
        raise AssertionError("a case builder seeded torch's global RNG")

    monkeypatch.setattr(torch, "manual_seed", no_global_seed)

    def written(seed: int, folder_name: str) -> dict[str, bytes]:
        torch.random.default_generator.manual_seed(seed)
        torch.rand(seed + 1)  # a different position in the stream too
        workdir = tmp_path / folder_name
        workdir.mkdir()
        write_inputs(SPECS[folder], workdir)
        return {f.name: f.read_bytes() for f in sorted((workdir / "inputs").iterdir())}

    assert written(1, "first") == written(2, "second")


def test_specs_reject_classic_mistakes():
    def unscaled(q, k):  # no 1/sqrt(d_head)
        scores = q @ k.transpose(-2, -1)
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
        return scores.masked_fill(mask, float("-inf")).softmax(-1)

    def query_softmax(q, k):  # softmax over the query axis
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
        return scores.masked_fill(mask, float("-inf")).softmax(-2)

    def counts(ids, vocab):  # counts, not probabilities
        m = torch.zeros(vocab, vocab, dtype=torch.float64)
        for a, b in zip(ids, ids[1:], strict=False):
            m[a, b] += 1
        return m

    def unshifted_loss(logits, tokens):  # predicts the token at t from logits at t
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())

    def train_with_decay(model, data, steps, batch_size, lr, seed=0):  # AdamW's default decay
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(steps):
            batch = sample_batch(data, batch_size, model.cfg.n_ctx, generator)
            loss = next_token_loss(model(batch), batch)
            loss.backward()  # and no zero_grad: the gradients pile up
            optimizer.step()
            losses.append(loss.item())
        return losses

    def fake_losses(model, data, steps, batch_size, lr, seed=0):  # reports, does not train
        return [math.log(model.cfg.d_vocab) * 0.99**step for step in range(steps)]

    def noising(model, clean, corrupt, metric):  # patches corrupt into clean, unnormalised
        return hw4.reference_head_patching(model, corrupt, clean, metric)

    def plain_accuracy(x, y, train, test):  # accuracy, not balanced accuracy
        predicted = fit_logistic_probe(x[train], y[train]).predict(x)
        return tuple((predicted[m] == y[m]).float().mean().item() for m in (train, test))

    def balanced_accuracy(x, y, fit_on, scored):
        predicted = fit_logistic_probe(x[fit_on], y[fit_on]).predict(x)
        recalls = [(predicted[scored & (y == c)] == c).float().mean() for c in (0, 1)]
        return torch.stack(recalls).mean().item()

    def fitted_on_everything(x, y, train, test):
        return tuple(balanced_accuracy(x, y, train | test, m) for m in (train, test))

    def swapped_splits(x, y, train, test):  # fits on the test tokens
        return balanced_accuracy(x, y, test, test), balanced_accuracy(x, y, test, train)

    wrong = [
        ("hw5_probes_and_saes", "evaluate_probe_tests", plain_accuracy),
        ("hw5_probes_and_saes", "evaluate_probe_tests", fitted_on_everything),
        ("hw5_probes_and_saes", "evaluate_probe_tests", swapped_splits),
        ("hw5_probes_and_saes", "evaluate_probe_tests", lambda x, y, train, test: (1.0, 0.0)),
        ("hw3_transformer_from_scratch", "training_run", train_with_decay),
        ("hw3_transformer_from_scratch", "training_run", fake_losses),
        ("hw4_circuits", "head_patching_tests", noising),
        ("hw3_transformer_from_scratch", "attention_pattern_tests", unscaled),
        ("hw3_transformer_from_scratch", "attention_pattern_tests", query_softmax),
        ("hw1_markov_tokenization", "transition_matrix_tests", counts),
        ("hw3_transformer_from_scratch", "loss_tests", unshifted_loss),
        (
            "hw2_superposition_geometry",
            "welch_bound_tests",
            lambda n, d: max(n - d, 0) / (d * max(n - 1, 1)),
        ),
    ]
    for folder, grade_id, fn in wrong:
        spec = SPECS[folder][grade_id]
        cases = spec.cases()
        assert spec.judge(cases, [_run_case(fn, case) for case in cases]) is not None, fn


def test_forbidden_names_are_read_from_the_source():
    banned = ("decoding_gpt", "MultiheadAttention")
    assert forbidden_names("from decoding_gpt.attention import X", banned) == ["decoding_gpt"]
    assert forbidden_names("%time 0\nimport torch.nn\ny = torch.nn.MultiheadAttention", banned) == [
        "MultiheadAttention"
    ]
    assert forbidden_names("def f(x):\n    return x", banned) == []
    assert forbidden_names("def f(:", banned) == list(banned)  # unreadable: nothing vouched for


def test_introspection_cannot_reach_the_reference_without_naming_it():
    spec = SPECS["hw3_transformer_from_scratch"]["multihead_attention_tests"]
    for source in (
        "class MultiHeadAttention(nn.Module):\n"
        "    def __new__(cls, *a):\n"
        "        ref = [c for c in nn.Module.__subclasses__() if c.__name__ == cls.__name__]\n"
        "        return ref[0](*a)",
        'MultiHeadAttention = getattr(__import__("decoding_gpt.attention"), "attention")',
        "import sys\nMultiHeadAttention = sys.modules['decoding_gpt.attention'].MultiHeadAttention",
        "class MultiHeadAttention(hw3.MultiHeadAttention):\n    pass",
    ):
        assert forbidden_names(source, spec.banned), source
    loss = SPECS["hw3_transformer_from_scratch"]["loss_tests"]
    assert "getattr" in loss.banned and SPECS["hw4_circuits"]["repeated_tokens_tests"].banned == ()
