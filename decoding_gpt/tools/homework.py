"""Command line: ``python -m decoding_gpt.tools.homework {make-student,grade,grade-class} ...``.

``make-student`` writes the student edition of every lecture (``notebooks/student/``) and
every homework (``student.ipynb``); ``--check`` fails if a committed one is stale.
``grade`` grades one submission; ``grade-class`` a folder of them, in parallel, into one
gradebook (CSV and JSON) and one feedback file per student.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from decoding_gpt.homework.grade import DEFAULT_CELL_TIMEOUT, Report, grade
from decoding_gpt.homework.sandbox import GIB, Limits
from decoding_gpt.homework.student import write_students
from decoding_gpt.tools import prog

DEFAULT_SOLUTIONS = ("notebooks/*.ipynb", "homework/*/solution.ipynb")
DEFAULTS = Limits()


def instructor_editions(root: Path = Path()) -> list[Path]:
    """Every lecture and homework solution notebook under ``root``, in course order."""
    return [path for pattern in DEFAULT_SOLUTIONS for path in sorted(root.glob(pattern))]


def _make_student(args: argparse.Namespace) -> int:
    paths = args.solutions or instructor_editions()
    if not paths:
        # An empty course (or a fresh fork) has nothing to regenerate: not an error.
        print(f"no instructor notebooks found ({', '.join(DEFAULT_SOLUTIONS)}); nothing to do")
        return 0
    changed = write_students([Path(path) for path in paths], check=args.check)
    for path in changed:
        verb = "out of date" if args.check else "wrote"
        print(f"{verb}: {path}")
    if args.check and changed:
        hint = "run `python -m decoding_gpt.tools.homework make-student` and commit"
        print(hint, file=sys.stderr)
        return 1
    print(f"{len(paths)} instructor notebook(s) checked, {len(changed)} student edition(s) changed")
    return 0


def _limits(args: argparse.Namespace) -> Limits:
    memory = int(args.memory_gib * GIB)
    return Limits(memory_bytes=memory, address_space_bytes=memory, wall_seconds=args.wall_timeout)


def feedback(report: Report) -> str:
    """The per-student text: each part's points and the message of its check."""
    lines = [f"{Path(report.submission).name}: {report.total:g} / {report.max_total:g}", ""]
    for part in report.parts:
        note = f"  ({part.status}: {part.error})" if part.status != "ok" else ""
        lines.append(f"{part.grade_id:<28} {part.points:>5g} / {part.max_points:<5g}{note}")
    lines += [f"sandbox: {report.sandbox}"] + [f"degraded: {why}" for why in report.degraded]
    return "\n".join(lines + [f"note: {note}" for note in report.notes]) + "\n"


def _grade(args: argparse.Namespace) -> int:
    solution = args.solution or args.submission.parent / "solution.ipynb"
    report = grade(args.submission, solution, cell_timeout=args.cell_timeout, limits=_limits(args))
    out = args.out or args.submission.with_suffix(".grade.json")
    if out.is_dir():  # a folder: the report is named after the submission
        out = out / args.submission.with_suffix(".grade.json").name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.to_json() + "\n")
    report.write_csv(out.with_suffix(".csv"))
    print(feedback(report), end="")
    print(f"report: {out} and {out.with_suffix('.csv')}")
    return 0


def _write_gradebook(reports: list[Report], out: Path) -> None:
    """``gradebook.csv`` (one row per student, one column per part) and ``gradebook.json``."""
    reports = sorted(reports, key=lambda report: report.submission)
    parts = list(dict.fromkeys(part.grade_id for report in reports for part in report.parts))
    with (out / "gradebook.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["submission", *parts, "total", "max_total", "sandbox", "notes"])
        for report in reports:
            points = {part.grade_id: part.points for part in report.parts}
            writer.writerow(
                [Path(report.submission).name, *(points.get(p, "") for p in parts), report.total,
                 report.max_total, report.sandbox, "; ".join(report.notes)]
            )  # fmt: skip
    data = [report.to_dict() for report in reports]
    (out / "gradebook.json").write_text(json.dumps(data, indent=2) + "\n")


def _grade_class(args: argparse.Namespace) -> int:
    submissions = sorted(p for p in args.folder.glob("*.ipynb") if p.name != "solution.ipynb")
    args.out.mkdir(parents=True, exist_ok=True)
    limits, reports = _limits(args), []
    start = time.monotonic()
    # Threads suffice: each grade waits on its own sandboxed processes.
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = {
            pool.submit(
                grade, path, args.solution, cell_timeout=args.cell_timeout, limits=limits
            ): path
            for path in submissions
        }
        for future in tqdm(as_completed(futures), total=len(futures), desc="grading", unit="nb"):
            path = futures[future]
            try:
                report = future.result()
            except Exception as err:  # one bad submission must not stop the class
                report = Report(str(path), str(args.solution), "none", 0.0)
                report.notes.append(f"grader error: {type(err).__name__}: {err}")
            reports.append(report)
            name = path.stem
            (args.out / f"{name}.feedback.txt").write_text(feedback(report))
    _write_gradebook(reports, args.out)
    elapsed = time.monotonic() - start
    rate = len(reports) / elapsed * 3600 if elapsed else 0.0
    print(f"{len(reports)} submission(s) in {elapsed:.0f} s ({rate:.0f} per hour, "
          f"{args.workers} worker(s)); gradebook: {args.out / 'gradebook.csv'}")  # fmt: skip
    return 0


def _add_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT, help="seconds per cell"
    )
    parser.add_argument(
        "--wall-timeout", type=float, default=DEFAULTS.wall_seconds, help="seconds in all"
    )
    parser.add_argument(
        "--memory-gib",
        type=float,
        default=DEFAULTS.memory_bytes / GIB,
        help="memory of the whole sandbox (and each process's address space)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("decoding_gpt.tools.homework"))
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-student", help="write the student edition of each notebook")
    make.add_argument(
        "solutions", nargs="*", type=Path, help=f"default: {' and '.join(DEFAULT_SOLUTIONS)}"
    )
    make.add_argument("--check", action="store_true", help="fail if a student notebook is stale")
    make.set_defaults(run=_make_student)

    grader = commands.add_parser("grade", help="grade a submission in a sandbox")
    grader.add_argument("submission", type=Path)
    grader.add_argument("--solution", type=Path, help="default: solution.ipynb beside it")
    grader.add_argument(
        "--out", type=Path, help="JSON report path or folder (CSV written beside it)"
    )
    _add_limits(grader)
    grader.set_defaults(run=_grade)

    batch = commands.add_parser("grade-class", help="grade a folder of submissions")
    batch.add_argument("folder", type=Path, help="the submissions (*.ipynb)")
    batch.add_argument("--solution", type=Path, required=True)
    batch.add_argument("--out", type=Path, required=True, help="folder for gradebook + feedback")
    batch.add_argument("--workers", type=int, default=2, help="submissions graded at once")
    _add_limits(batch)
    batch.set_defaults(run=_grade_class)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
