"""Execute a notebook cell by cell and report each cell's outcome as JSON lines.

Run inside the sandbox by the grader::

    python -m decoding_gpt.homework.runner NOTEBOOK --results-fd FD --cell-timeout S

One JSON object per executed code cell is written to file descriptor ``FD`` (a pipe the
grader holds): ``{"index": i, "status": "ok" | "error" | "timeout" | "dead-kernel",
"error": "<exception name>: <message>"}``. The kernel does not inherit ``FD``, so code in
the submission cannot forge results by printing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError


def _error_summary(err: Exception) -> str:
    name = getattr(err, "ename", type(err).__name__)
    value = getattr(err, "evalue", str(err))
    return f"{name}: {value}"[:500]


def run(path: str, results_fd: int, cell_timeout: int) -> None:
    results = os.fdopen(results_fd, "w", buffering=1)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=cell_timeout, kernel_name="python3", interrupt_on_timeout=True
    )
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            outcome = {"index": index, "status": "ok", "error": ""}
            try:
                client.execute_cell(cell, index)
            except CellTimeoutError as err:
                outcome.update(status="timeout", error=_error_summary(err))
            except CellExecutionError as err:
                outcome.update(status="error", error=_error_summary(err))
            except DeadKernelError as err:
                outcome.update(status="dead-kernel", error=_error_summary(err))
                results.write(json.dumps(outcome) + "\n")
                return
            results.write(json.dumps(outcome) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--results-fd", type=int, required=True)
    parser.add_argument("--cell-timeout", type=int, default=120)
    args = parser.parse_args(argv)
    os.set_inheritable(args.results_fd, False)  # the kernel must not get the results pipe
    run(args.notebook, args.results_fd, args.cell_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
