"""Instructor tooling: student editions of lectures and homework, and a grader.

A lecture ``notebooks/NN_<topic>.ipynb`` and a homework ``homework/hwN_<name>/solution.ipynb``
are the single source of truth of their student editions (``notebooks/student/`` and
``student.ipynb``). Both use nbgrader's markers, so the same notebook works with nbgrader:

- ``### BEGIN SOLUTION`` / ``### END SOLUTION`` around the answer inside a code cell (or a
  markdown cell): :mod:`decoding_gpt.homework.student` replaces the block by a stub that
  raises ``NotImplementedError`` (markdown: "YOUR ANSWER HERE");
- ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` around checks students do not see:
  removed from the student version, restored by the grader;
- graded cells carry nbgrader metadata ``{"nbgrader": {"grade": true, "grade_id": ...,
  "points": ...}}``: a graded cell that runs without an exception earns its points.

Commands (``python -m decoding_gpt.tools.homework --help``):

- ``make-student [--check] [NOTEBOOK ...]`` writes the student edition of each lecture and
  homework;
  ``--check`` fails if a committed student notebook is out of date (CI runs it);
- ``grade SUBMISSION.ipynb --solution SOLUTION.ipynb`` executes a submission in a sandbox
  (see :mod:`decoding_gpt.homework.sandbox`) and writes a JSON and CSV score report; the
  parts with a grading spec (:mod:`decoding_gpt.homework.specs`) are judged from the
  submission's outputs, outside the sandbox;
- ``grade-class FOLDER --solution SOLUTION.ipynb --out DIR`` grades a folder of submissions
  in parallel into one gradebook and a feedback file per student.
"""
