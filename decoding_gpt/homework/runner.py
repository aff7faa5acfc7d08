"""Execute a notebook cell by cell on a Jupyter kernel; report each cell's outcome as JSON.

Run inside the sandbox by the grader::

    python -m decoding_gpt.homework.runner --results-fd FD --cell-timeout S [--isolate-kernel]

The notebook comes on stdin (never as a file in the working directory, which the kernel
can read). One JSON object per executed code cell goes to file descriptor ``FD``, a pipe
the grader holds: ``{"index": i, "status": "ok" | "error" | "timeout" | "dead-kernel",
"error": "<exception name>: <message>"}``.

The kernel cannot reach ``FD``: it is not inherited, and with ``--isolate-kernel`` the
kernel runs in its own PID namespace (and a nested user namespace that locks its
``/proc``), so ``/proc/<runner>/fd/FD``, the runner's memory and its signals are out of
sight. What the kernel *can* do is lie about its own cells (replace their code by ``pass``
with an input transformer, patch the checks): that is why a score rests on
:mod:`decoding_gpt.homework.specs` wherever a part has a spec, and these results only
decide the parts that have none.

Timeouts: a cell running past ``S`` seconds is interrupted (SIGINT); if the kernel is not
idle ``GRACE_SECONDS`` later (the cell ignores SIGINT), the kernel is killed (SIGKILL to
its whole PID namespace) and restarted, so the next cells still run, on a fresh kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from queue import Empty
from typing import Any

import nbformat
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

GRACE_SECONDS = 5.0
START_SECONDS = 120.0
# The kernel's own sandbox inside the runner's: a PID namespace (the runner is invisible),
# and a nested user namespace that locks the new /proc over the runner's. `sh` is the
# namespace's init, so that SIGINT reaches Python (an init ignores unhandled signals).
# oom_score_adj 1000: when the sandbox runs out of memory, the kernel dies, not the runner.
KERNEL_WRAPPER = [
    "unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount",
    "--mount-proc", "unshare", "--user", "--map-root-user", "--mount",
    "sh", "-c", 'echo 1000 > /proc/self/oom_score_adj; "$@"; exit $?', "dgpt-kernel",
]  # fmt: skip


class IsolatedKernelManager(KernelManager):
    """A kernel manager whose kernel runs behind :data:`KERNEL_WRAPPER`."""

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        return KERNEL_WRAPPER + super().format_kernel_cmd(extra_arguments)


def _error_summary(content: dict[str, Any]) -> str:
    return f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"[:500]


def _drain_iopub(client: BlockingKernelClient) -> None:
    """Discard the kernel's outputs (the grader does not use them; they must not pile up)."""
    while True:
        try:
            client.get_iopub_msg(timeout=0)
        except Empty:
            return


def _wait_reply(client: BlockingKernelClient, msg_id: str, seconds: float) -> dict | None:
    """The shell reply to ``msg_id``, or None after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _drain_iopub(client)
        try:
            reply = client.get_shell_msg(timeout=min(0.2, max(deadline - time.monotonic(), 0)))
        except Empty:
            continue
        if reply.get("parent_header", {}).get("msg_id") == msg_id:
            return reply
    return None


class Runner:
    """A kernel that executes cells with a timeout, and recovers from one that hangs."""

    def __init__(self, cell_timeout: float, *, isolate: bool) -> None:
        self.cell_timeout = cell_timeout
        self.manager = (IsolatedKernelManager if isolate else KernelManager)(kernel_name="python3")
        self.manager.start_kernel(cwd=os.getcwd())
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=START_SECONDS)

    def execute(self, source: str) -> dict[str, str]:
        """Run one cell: its status (ok, error, timeout, dead-kernel) and error message."""
        msg_id = self.client.execute(source, allow_stdin=False, stop_on_error=False)
        reply = _wait_reply(self.client, msg_id, self.cell_timeout)
        if reply is None:
            self.manager.interrupt_kernel()
            if _wait_reply(self.client, msg_id, GRACE_SECONDS) is None:
                self.restart()  # it ignored SIGINT
            return {"status": "timeout", "error": f"cell ran over {self.cell_timeout:g} s"}
        content = reply.get("content", {})
        if content.get("status") == "ok":
            return {"status": "ok", "error": ""}
        return {"status": "error", "error": _error_summary(content)}

    def restart(self) -> None:
        self.manager.restart_kernel(now=True)  # SIGKILL to the kernel's process group
        self.client.wait_for_ready(timeout=START_SECONDS)

    def alive(self) -> bool:
        return bool(self.manager.is_alive())

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def _run_cell(runner: Runner, source: str) -> dict[str, str]:
    """One cell's outcome; a kernel that died (killed, out of memory) is restarted first."""
    try:
        if not runner.alive():  # the submission killed its kernel: later cells get a new one
            runner.restart()
        outcome = runner.execute(source)
    except Exception as err:  # a kernel that cannot restart: this cell, not the runner, fails
        return {"status": "dead-kernel", "error": f"{type(err).__name__}: {err}"[:500]}
    if outcome["status"] != "timeout" and not runner.alive():
        outcome["status"] = "dead-kernel"
    return outcome


def run(
    notebook: nbformat.NotebookNode, results_fd: int, cell_timeout: float, isolate: bool
) -> None:
    results = os.fdopen(results_fd, "w", buffering=1)
    runner = Runner(cell_timeout, isolate=isolate)
    try:
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code":
                outcome = {"index": index, **_run_cell(runner, cell.source)}
                results.write(json.dumps(outcome) + "\n")
    finally:
        runner.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--results-fd", type=int, required=True)
    parser.add_argument("--cell-timeout", type=float, required=True)
    parser.add_argument("--isolate-kernel", action="store_true")
    args = parser.parse_args(argv)
    os.set_inheritable(args.results_fd, False)  # the kernel must not get the results pipe
    notebook = nbformat.reads(sys.stdin.read(), as_version=4)
    run(notebook, args.results_fd, args.cell_timeout, args.isolate_kernel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
