"""Run an untrusted command (a student's notebook) so it cannot harm the grader.

What is sandboxed, on Linux with unprivileged user namespaces (``unshare`` from util-linux):

- **File system:** the whole file system is mounted read-only inside a private mount
  namespace, except the submission's own working directory. The read-only mounts are made
  in an outer user namespace and the command runs in a nested one, so the kernel "locks"
  them: the command cannot remount them writable, not even as its namespace's root.
  Deleting or editing the grader's files, the solutions or the course package fails with
  "Read-only file system".
- **Processes:** a private PID namespace; when the command exits or is killed, every
  process it started (a forked bomb, a background writer) dies with it.
- **Network:** a private network namespace with only loopback (the Jupyter kernel talks to
  its client over loopback), so a submission cannot reach anything else.
- **Resources:** address-space (memory) and file-size limits (``setrlimit``), a per-cell
  timeout in the runner and a hard wall-clock limit here, after which the sandbox is killed.

What is NOT sandboxed: CPU share and disk usage inside the working directory (only the
size of each file is capped), reading files that are world-readable (a submission can read
the solution notebook if it is on the same machine: grade on a machine or account where the
solutions are not readable, or accept that graded checks are visible), and kernel exploits.
Without ``unshare`` (macOS, or user namespaces disabled) only the resource limits and the
timeouts apply; the grader says so in its report (``"sandbox": "rlimits-only"``).
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run."""

    memory_bytes: int = 8 * GIB  # address space; torch alone maps ~2 GiB
    file_size_bytes: int = 256 * 1024**2
    wall_seconds: float = 1800.0


def namespaces_available() -> bool:
    """True if this machine lets an unprivileged process create user+mount namespaces."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    return probe.returncode == 0


def _namespace_wrapper(command: Sequence[str], workdir: Path) -> list[str]:
    """Wrap ``command`` in user/mount/pid(/net) namespaces with a read-only root."""
    quoted_dir = shlex.quote(str(workdir))
    setup = [
        f"mount --bind {quoted_dir} {quoted_dir}",  # its own mount, so it stays writable
        "mount -o remount,bind,ro /",
    ]
    network = ["--net"] if shutil.which("ip") else []
    if network:
        setup.append("ip link set lo up")
    inner = " ".join(shlex.quote(part) for part in command)
    # The nested user namespace locks the read-only mounts made by the outer one.
    script = " && ".join(setup) + f" && exec unshare --user --map-root-user --mount {inner}"
    return [
        "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork",
        "--kill-child", "--mount-proc", *network, "sh", "-c", script,
    ]  # fmt: skip


def _apply_limits(limits: Limits) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_sandboxed(
    command: Sequence[str],
    workdir: Path,
    limits: Limits,
    *,
    pass_fds: Sequence[int] = (),
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``command`` in the sandbox with ``workdir`` as its only writable directory.

    Returns the process and the sandbox kind (``"namespaces"`` or ``"rlimits-only"``).
    The caller waits for it (and kills it after ``limits.wall_seconds``).
    """
    workdir = workdir.resolve()
    kind = "namespaces" if namespaces_available() else "rlimits-only"
    argv = _namespace_wrapper(command, workdir) if kind == "namespaces" else list(command)
    sandbox_env = {
        **(env if env is not None else os.environ),
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
        "IPYTHONDIR": str(workdir / "ipython"),
        "MPLCONFIGDIR": str(workdir / "mpl"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name in ("tmp", "runtime", "ipython", "mpl"):
        (workdir / name).mkdir(exist_ok=True)
    process = subprocess.Popen(
        argv,
        cwd=workdir,
        env=sandbox_env,
        pass_fds=tuple(pass_fds),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: _apply_limits(limits),
        start_new_session=True,
    )
    return process, kind
