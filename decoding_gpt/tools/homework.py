"""Command line: ``python -m decoding_gpt.tools.homework {make-student,grade} ...``.

``make-student`` writes the student edition of every lecture (``notebooks/student/``) and
every homework (``student.ipynb``); ``--check`` fails if a committed one is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from decoding_gpt.homework.grade import grade
from decoding_gpt.homework.sandbox import Limits
from decoding_gpt.homework.student import write_students
from decoding_gpt.tools import prog

DEFAULT_SOLUTIONS = ("notebooks/*.ipynb", "homework/*/solution.ipynb")


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


def _grade(args: argparse.Namespace) -> int:
    solution = args.solution or args.submission.parent / "solution.ipynb"
    limits = Limits(memory_bytes=int(args.memory_gib * 1024**3), wall_seconds=args.wall_timeout)
    report = grade(args.submission, solution, cell_timeout=args.cell_timeout, limits=limits)
    out = args.out or args.submission.with_suffix(".grade.json")
    if out.is_dir():  # a folder: the report is named after the submission
        out = out / args.submission.with_suffix(".grade.json").name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.to_json() + "\n")
    report.write_csv(out.with_suffix(".csv"))
    for part in report.parts:
        note = f"  ({part.status}: {part.error})" if part.status != "ok" else ""
        print(f"{part.grade_id:<24} {part.points:>5g} / {part.max_points:<5g}{note}")
    print(f"{'TOTAL':<24} {report.total:>5g} / {report.max_total:<5g}   [{report.sandbox}]")
    print(f"report: {out} and {out.with_suffix('.csv')}")
    return 0


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
    grader.add_argument("--cell-timeout", type=int, default=300, help="seconds per cell")
    grader.add_argument("--wall-timeout", type=float, default=1800, help="seconds in all")
    grader.add_argument("--memory-gib", type=float, default=8, help="address-space limit")
    grader.set_defaults(run=_grade)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
