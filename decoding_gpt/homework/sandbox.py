"""Run an untrusted command (a student's notebook) so it cannot harm or fool the grader.

What is sandboxed, on Linux with unprivileged user namespaces (``unshare`` from util-linux):

- **File system: a new root holding only what a student may use.** The command runs in
  (``pivot_root``) a fresh ``tmpfs`` that holds read-only binds of the system directories
  (``/usr``, ``/lib*``, ``/bin``, ``/sbin``, ``/etc``), the Python installation and the
  virtual environment, and the ``decoding_gpt`` package directory; ``/dev`` has only
  ``null``, ``zero``, ``random``, ``urandom`` and ``full``; ``/proc`` is the sandbox's own.
  Nothing else exists there: not the course repository (so not the solution notebooks,
  the hidden tests or ``.git``), not the other submissions, not ``/home``, ``/tmp``,
  ``/run``, ``/dev/shm`` or ``/sys``. The only writable mount is the submission's working
  directory. The mounts are made in an outer user namespace and the command runs in a
  nested one, so the kernel "locks" them: the command cannot unmount or remount them, not
  even as its namespace's root.
- **Processes:** a private PID namespace; when the command exits or is killed, every
  process it started (a fork bomb, a background writer, a double-forked daemon) dies with
  it. The sandbox's first process gets ``PR_SET_PDEATHSIG``, so a grader killed by
  ``SIGKILL`` takes its sandbox with it.
- **Network:** a private network namespace with only loopback (the Jupyter kernel talks to
  its client over loopback), so a submission cannot reach anything else.
- **Environment:** a short allow-list (``PATH``, locale, thread counts, ``DGPT_*``), never
  the grader's own environment.
- **Resources:** memory and process count for the whole sandbox in a cgroup (v2 where the
  grader's cgroup is delegated, v1 where ``memory`` and ``pids`` are writable, as for
  root); without one, ``RLIMIT_NPROC`` plus the per-process address-space limit, and the
  report says "degraded". Always: file-size and core-dump limits, the runner's per-cell
  timeout (SIGINT, then SIGKILL after a grace period) and a wall-clock limit here.

What is NOT sandboxed: CPU share, disk usage inside the working directory (only each
file's size is capped), and kernel exploits. Without namespaces (macOS, or user namespaces
disabled) the file system, the process table and the network are the grader's: the report
lists each missing protection under ``degraded``, and the grader should then run in a
throw-away container or VM.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import decoding_gpt

GIB = 1024**3
MIB = 1024**2
PR_SET_PDEATHSIG = 1
MARKER_VARIABLE = "DGPT_SANDBOX"
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc")
DEVICES = ("null", "zero", "random", "urandom", "full")
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")
OWN_CGROUP = Path("/proc/self/cgroup")  # the grader's own cgroup, one line per hierarchy


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run (the grader's defaults; see homework/README.md)."""

    memory_bytes: int = 8 * GIB  # the whole sandbox (cgroup)
    address_space_bytes: int = 8 * GIB  # each process (RLIMIT_AS); torch alone maps ~2 GiB
    max_processes: int = 512  # tasks (threads count: torch and the kernel start dozens)
    file_size_bytes: int = 256 * MIB
    wall_seconds: float = 1800.0
    output_bytes: int = 64 * 1024  # stdout/stderr kept for the report; the rest is drained


def namespaces_available() -> bool:
    """True if this machine lets an unprivileged process create user+mount namespaces."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "true"],
        capture_output=True,
    )
    return probe.returncode == 0


def exposed_paths() -> list[Path]:
    """The directories bound read-only into the sandbox's root: system, Python, the package.

    The package is exposed as its own directory, never its parent: in an editable install
    the parent is the course repository, which holds the solutions.
    """
    package = Path(decoding_gpt.__file__).resolve().parent
    python = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent]
    paths = [Path(p) for p in SYSTEM_DIRS if Path(p).exists()] + python + [package]
    unique: list[Path] = []
    for path in paths:  # drop duplicates and paths inside an exposed one
        if not any(path == kept or kept in path.parents for kept in unique):
            unique = [kept for kept in unique if path not in kept.parents] + [path]
    return unique


def _bind(source: Path, root: Path, *, writable: bool = False) -> list[str]:
    """Shell lines binding ``source`` at the same path under ``root`` (read-only by default).

    A symlinked system directory (``/lib -> usr/lib``) is copied as the link.
    """
    src, dst = shlex.quote(str(source)), shlex.quote(f"{root}{source}")
    if source.is_symlink():
        return [f"mkdir -p $(dirname {dst})", f"cp -P {src} {dst}"]
    lines = [f"mkdir -p {dst}", f"mount --bind {src} {dst}"]
    return lines if writable else [*lines, f"mount -o remount,bind,ro {dst}"]


def setup_script(root: Path, workdir: Path) -> str:
    """The outer namespace's script: build ``root``, pivot into it, exec the command there."""
    quoted_root = shlex.quote(str(root))
    lines = ["set -e", "mount --make-rprivate /"]
    if shutil.which("ip"):
        lines.append("ip link set lo up")
    lines.append(f"mount -t tmpfs -o size=4m,mode=755 dgpt-root {quoted_root}")
    for path in exposed_paths():
        lines += _bind(path, root)
    for device in DEVICES:
        target = shlex.quote(f"{root}/dev/{device}")
        lines += [f"mkdir -p {quoted_root}/dev", f"touch {target}"]
        lines.append(f"mount --bind /dev/{device} {target}")
    lines += [f"mkdir -p {quoted_root}/proc {quoted_root}/tmp"]
    lines.append(f"mount -t proc proc {quoted_root}/proc")
    lines += _bind(workdir, root, writable=True)
    lines += [f"mkdir {quoted_root}/.oldroot", f"mount -o remount,ro {quoted_root}"]
    # pivot_root, not chroot: a chroot-ed process may not create the kernel's user namespace.
    lines += [f"cd {quoted_root}", "pivot_root . .oldroot", "umount -l /.oldroot"]
    lines.append(f"cd {shlex.quote(str(workdir))}")
    # The nested user namespace locks every mount above: the command cannot undo them.
    lines.append('exec unshare --user --map-root-user --mount "$@"')
    return "\n".join(lines)


def _namespace_argv(command: Sequence[str], root: Path, workdir: Path) -> list[str]:
    network = ["--net"] if shutil.which("ip") else []
    return [
        "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child",
        *network, "sh", "-c", setup_script(root, workdir), "dgpt-sandbox", *command,
    ]  # fmt: skip


@dataclass
class Cgroup:
    """A cgroup capping the memory and task count of every process in the sandbox.

    cgroup v2: a child of the grader's own cgroup, where it is delegated (writable, with
    ``memory`` and ``pids`` enabled for children). cgroup v1: one directory per controller
    under ``/sys/fs/cgroup/{memory,pids}``, where those are writable (root, or a delegated
    hierarchy). ``create`` returns None when neither is possible.
    """

    directories: list[Path]
    version: int

    @classmethod
    def create(cls, name: str, limits: Limits) -> Cgroup | None:
        for make in (cls._create_v2, cls._create_v1):
            with contextlib.suppress(OSError):
                group = make(name, limits)
                if group is not None:
                    return group
        return None

    @classmethod
    def _create_v2(cls, name: str, limits: Limits) -> Cgroup | None:
        own = OWN_CGROUP.read_text().splitlines()
        path = next((line[3:] for line in own if line.startswith("0::")), None)
        parent = CGROUP_ROOT / path.lstrip("/") if path is not None else None
        if parent is None or not (parent / "cgroup.subtree_control").exists():
            return None
        if not {"memory", "pids"} <= set((parent / "cgroup.subtree_control").read_text().split()):
            return None
        directory = parent / name
        directory.mkdir()
        group = cls([directory], 2)
        try:
            (directory / "memory.max").write_text(str(limits.memory_bytes))
            (directory / "memory.swap.max").write_text("0")
            (directory / "pids.max").write_text(str(limits.max_processes))
        except OSError:
            group.remove()
            raise
        return group

    @classmethod
    def _create_v1(cls, name: str, limits: Limits) -> Cgroup | None:
        own = dict(line.split(":", 2)[1:] for line in OWN_CGROUP.read_text().splitlines())
        if "memory" not in own or "pids" not in own:
            return None
        group = cls([], 1)
        try:
            for controller in ("memory", "pids"):
                directory = CGROUP_ROOT / controller / own[controller].lstrip("/") / name
                directory.mkdir()
                group.directories.append(directory)
            memory, pids = group.directories
            (memory / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
            (pids / "pids.max").write_text(str(limits.max_processes))
        except OSError:
            group.remove()
            raise
        return group

    def join_argv(self, command: Sequence[str]) -> list[str]:
        """``command`` behind a shell that first moves itself into the group, then execs."""
        joins = " && ".join(
            f"echo $$ > {shlex.quote(str(directory / 'cgroup.procs'))}"
            for directory in self.directories
        )
        return ["sh", "-c", f'{joins} && exec "$@"', "dgpt-cgroup", *command]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.directories:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        return found

    def peak_memory(self) -> int | None:
        """The most memory the group held at once (bytes), where the kernel records it."""
        names = ("memory.peak",) if self.version == 2 else ("memory.max_usage_in_bytes",)
        for directory in self.directories:
            for name in names:
                with contextlib.suppress(OSError, ValueError):
                    return int((directory / name).read_text())
        return None

    def kill(self) -> None:
        """SIGKILL every process in the group, until it is empty (forks race the first pass)."""
        if self.version == 2 and (self.directories[0] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.directories[0] / "cgroup.kill").write_text("1")
        for _ in range(200):
            remaining = self.pids()
            if not remaining:
                return
            for pid in remaining:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        for directory in reversed(self.directories):
            for _ in range(100):  # a killed process leaves the group a moment later
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, loaded before any fork (``preexec_fn`` must not load libraries)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _apply_limits(limits: Limits, cgroup: Cgroup | None, prctl: Callable[..., int] | None) -> None:
    """In the child, before ``exec``: die with the grader, set the rlimits.

    Only system calls here (the grader may have threads). The cgroup is joined by the
    command itself (:func:`_join_cgroup_argv`).
    """
    if prctl is not None:  # the kernel SIGKILLs this process when the grader dies
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if cgroup is None:  # cap the task count per user (per user namespace on Linux >= 5.14)
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
    space = limits.address_space_bytes
    resource.setrlimit(resource.RLIMIT_AS, (space, space))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def sandbox_env(workdir: Path, marker: str) -> dict[str, str]:
    """The sandbox's environment: an allow-list of the grader's, and paths in ``workdir``."""
    allowed = {
        key: value
        for key, value in os.environ.items()
        if key in ENV_ALLOW or key.startswith("DGPT_")
    }
    return {
        **allowed,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
        "JUPYTER_DATA_DIR": str(workdir / "jupyter"),
        "IPYTHONDIR": str(workdir / "ipython"),
        "MPLCONFIGDIR": str(workdir / "mpl"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        MARKER_VARIABLE: marker,
    }


@dataclass
class Sandbox:
    """One sandboxed run: the process, its cgroup, and what protection is missing."""

    process: subprocess.Popen
    kind: str  # "namespaces" or "rlimits-only"
    marker: str  # in every sandboxed process's environment (to count leftovers)
    cgroup: Cgroup | None
    degraded: list[str] = field(default_factory=list)
    peak_memory: int | None = None  # bytes the whole sandbox held at most (cgroup only)

    def kill(self) -> None:
        """SIGKILL every process of the sandbox and reap the first one. Idempotent."""
        if self.cgroup is not None:
            self.cgroup.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # rlimits-only: its session
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()  # namespaces: unshare --kill-child takes the PID namespace
        self.process.wait()
        if self.cgroup is not None:
            self.cgroup.kill()
            self.peak_memory = self.peak_memory or self.cgroup.peak_memory()
            self.cgroup.remove()


def _degradations(kind: str, cgroup: Cgroup | None) -> list[str]:
    reasons = []
    if kind != "namespaces":
        reasons.append(
            "no unprivileged user namespaces: the submission sees the grader's file system "
            "(solutions included), processes and network"
        )
    if cgroup is None:
        reasons.append(
            "no writable cgroup: memory is capped per process (RLIMIT_AS) and the task "
            "count by RLIMIT_NPROC, not for the sandbox as a whole"
        )
    return reasons


@contextlib.contextmanager
def sandboxed(
    command: Sequence[str],
    workdir: Path,
    limits: Limits,
    *,
    pass_fds: Sequence[int] = (),
    stdin: int | None = None,
    kind: str | None = None,
) -> Iterator[Sandbox]:
    """Run ``command`` in the sandbox with ``workdir`` as its only writable directory.

    ``kind`` ("namespaces" or "rlimits-only") defaults to the best this machine allows.
    ``workdir`` must be a directory whose parent belongs to the grader (the root of the
    sandbox is built in ``workdir.parent / "root"``). stdout and stderr come back merged on
    ``sandbox.process.stdout``; the caller must drain it. On leaving the block, however it is
    left, every process of the sandbox is killed.
    """
    workdir = workdir.resolve()
    marker = secrets.token_hex(8)
    if kind is None:
        kind = "namespaces" if namespaces_available() else "rlimits-only"
    cgroup = Cgroup.create(f"dgpt-sandbox-{marker}", limits)
    if kind == "namespaces":
        root = workdir.parent / "root"
        root.mkdir(exist_ok=True)
        argv = _namespace_argv(command, root, workdir)
    else:
        argv = list(command)
    if cgroup is not None:
        argv = cgroup.join_argv(argv)
    env = sandbox_env(workdir, marker)
    prctl = _prctl()
    for name in ("tmp", "runtime", "jupyter", "ipython", "mpl"):
        (workdir / name).mkdir(exist_ok=True)
    try:
        process = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            pass_fds=tuple(pass_fds),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _apply_limits(limits, cgroup, prctl),
            start_new_session=True,
        )
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        raise
    sandbox = Sandbox(process, kind, marker, cgroup, _degradations(kind, cgroup))
    try:
        yield sandbox
    finally:
        sandbox.kill()
        if process.stdout is not None:
            process.stdout.close()


def processes_with_marker(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``marker`` (leftovers of a sandbox).

    Reads ``/proc/*/environ``: a process that replaced its environment by ``exec`` with a
    new one escapes this count, not the PID namespace or the cgroup that kill it.
    """
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                status = (entry / "stat").read_text()
                if status.rsplit(")", 1)[-1].split()[0] != "Z":  # zombies hold nothing
                    found.append(int(entry.name))
    return found
