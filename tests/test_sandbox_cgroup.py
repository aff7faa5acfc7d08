"""The sandbox's cgroup set-up, on fake cgroup file systems (v2 delegated, v1, none).

Which files the grader writes, and how the sandbox joins the group, are checked here for
both cgroup versions whatever this machine runs; that the kernel then enforces the limits
is measured by ``test_grader_attacks.py::test_hang_and_memory_are_contained`` on the
cgroup this machine has (it skips, saying why, where there is none).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from decoding_gpt.homework import sandbox
from decoding_gpt.homework.sandbox import MIB, Cgroup, Limits

LIMITS = Limits(memory_bytes=700 * MIB, max_processes=64)


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    monkeypatch.setattr(sandbox, "CGROUP_ROOT", root)
    monkeypatch.setattr(sandbox, "OWN_CGROUP", tmp_path / "self-cgroup")
    return root


def _own_cgroup(root: Path, text: str) -> None:
    (root.parent / "self-cgroup").write_text(text)


def _delegated_v2(root: Path, controllers: str) -> Path:
    """The grader's own v2 cgroup ``/grader.slice`` with ``controllers`` enabled below it."""
    parent = root / "grader.slice"
    parent.mkdir()
    (parent / "cgroup.subtree_control").write_text(controllers + "\n")
    _own_cgroup(root, "0::/grader.slice\n")
    return parent


def test_v2_child_of_the_graders_cgroup_gets_every_limit(fake_root: Path):
    parent = _delegated_v2(fake_root, "cpu memory pids")
    group = Cgroup.create("dgpt-test", LIMITS)
    assert group is not None and group.version == 2
    assert group.directories == [parent / "dgpt-test"]
    directory = group.directories[0]
    assert (directory / "memory.max").read_text() == str(700 * MIB)
    assert (directory / "memory.swap.max").read_text() == "0"  # no escape into swap
    assert (directory / "pids.max").read_text() == "64"
    (directory / "memory.peak").write_text("123456\n")
    assert group.peak_memory() == 123456


def test_the_sandbox_joins_the_group_before_its_command_runs(fake_root: Path, tmp_path: Path):
    _delegated_v2(fake_root, "memory pids")
    group = Cgroup.create("dgpt-test", LIMITS)
    assert group is not None
    out = tmp_path / "ran"
    argv = group.join_argv(["sh", "-c", f'echo $$ > "{out}"'])
    subprocess.run(argv, check=True, timeout=30)
    # the shell wrote its pid into cgroup.procs, then exec'd the command in the same process
    assert group.pids() == {int(out.read_text())}


def test_v2_without_delegated_controllers_is_not_used(fake_root: Path):
    _delegated_v2(fake_root, "cpu memory")  # no pids controller for children
    assert Cgroup._create_v2("dgpt-test", LIMITS) is None
    assert Cgroup.create("dgpt-test", LIMITS) is None  # and no v1 line either: degraded
    assert not (fake_root / "grader.slice" / "dgpt-test").exists()


def test_v1_one_directory_per_controller(fake_root: Path):
    _own_cgroup(fake_root, "9:pids:/job\n4:memory:/job\n0::/\n")
    for controller in ("memory", "pids"):
        (fake_root / controller / "job").mkdir(parents=True)
    group = Cgroup.create("dgpt-test", LIMITS)
    assert group is not None and group.version == 1
    memory, pids = group.directories
    assert memory == fake_root / "memory" / "job" / "dgpt-test"
    assert (memory / "memory.limit_in_bytes").read_text() == str(700 * MIB)
    assert (pids / "pids.max").read_text() == "64"


def test_a_group_that_cannot_be_made_gives_none(fake_root: Path):
    _own_cgroup(fake_root, "9:pids:/job\n4:memory:/job\n0::/\n")  # v1 lines, no directories
    assert Cgroup.create("dgpt-test", LIMITS) is None
