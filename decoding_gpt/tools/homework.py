"""Command line: ``python -m decoding_gpt.tools.homework {make-student,grade} ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from decoding_gpt.homework.grade import grade
from decoding_gpt.homework.sandbox import Limits
from decoding_gpt.homework.student import write_students
from decoding_gpt.tools import prog

DEFAULT_SOLUTIONS = "homework/*/solution.ipynb"


def _make_student(args: argparse.Namespace) -> int:
    paths = args.solutions or sorted(Path().glob(DEFAULT_SOLUTIONS))
    if not paths:
        # An empty course (or a fresh fork) has nothing to regenerate: not an error.
        print(f"no solution notebooks found ({DEFAULT_SOLUTIONS}); nothing to do")
        return 0
    changed = write_students([Path(path) for path in paths], check=args.check)
    for path in changed:
        verb = "out of date" if args.check else "wrote"
        print(f"{verb}: {path}")
    if args.check and changed:
        hint = "run `python -m decoding_gpt.tools.homework make-student` and commit"
        print(hint, file=sys.stderr)
        return 1
    print(f"{len(paths)} solution notebook(s) checked, {len(changed)} student notebook(s) changed")
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

    make = commands.add_parser("make-student", help="write student.ipynb beside each solution")
    make.add_argument("solutions", nargs="*", type=Path, help=f"default: {DEFAULT_SOLUTIONS}")
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
