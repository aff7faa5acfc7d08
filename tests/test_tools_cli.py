"""The maintainer command lines: each usage line shows the name it was invoked by.

``dgpt-train --help`` says ``usage: dgpt-train ...``; ``python -m decoding_gpt.tools.train
--help`` says ``usage: python -m decoding_gpt.tools.train ...`` (``decoding_gpt.tools.prog``).
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from decoding_gpt.tools import prog

ROOT = Path(__file__).resolve().parents[1]

# The console scripts as pyproject.toml declares them: name -> "module:main".
DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
SCRIPTS = {name: target.removesuffix(":main") for name, target in DECLARED.items()}


def _first_line(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()[0]


def test_every_script_is_a_tools_main():
    expected = {"dgpt-train", "dgpt-build-model", "dgpt-build-data", "dgpt-scaling-sweep"}
    assert expected | {"dgpt-homework"} <= set(SCRIPTS)
    for name, target in DECLARED.items():
        assert name.startswith("dgpt-") and target.startswith("decoding_gpt.tools."), name
        assert target.endswith(":main"), name
    for module in SCRIPTS.values():
        assert callable(importlib.import_module(module).main), module


@pytest.mark.slow
def test_installed_console_script_names_itself():
    script = shutil.which("dgpt-train", path=str(Path(sys.executable).parent))
    assert script, f"dgpt-train is not installed beside {sys.executable}; run `make install`"
    assert _first_line([script, "--help"]).startswith("usage: dgpt-train ")


@pytest.mark.slow
def test_python_dash_m_names_the_module():
    line = _first_line([sys.executable, "-m", "decoding_gpt.tools.train", "--help"])
    assert line.startswith("usage: python -m decoding_gpt.tools.train ")


@pytest.mark.parametrize(("script", "module"), SCRIPTS.items())
def test_every_tool_uses_the_invoked_name(script, module, monkeypatch, capsys):
    main = importlib.import_module(module).main
    for argv0, expected in [
        (f"/venv/bin/{script}", script),  # the console-script launcher
        (f"/src/{module.replace('.', '/')}.py", f"python -m {module}"),  # python -m
    ]:
        monkeypatch.setattr(sys, "argv", [argv0, "--help"])
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: {expected} ")


def test_prog_falls_back_to_python_dash_m(monkeypatch):
    module = "decoding_gpt.tools.train"
    monkeypatch.setattr(sys, "argv", ["C:\\venv\\Scripts\\dgpt-train.exe"])
    assert prog(module) == "dgpt-train"  # pip's Windows launcher
    # Another program calling main() (pytest, torchrun) or another tool's script name.
    for argv0 in ["/venv/bin/pytest", "/venv/bin/dgpt-homework", "-c", ""]:
        monkeypatch.setattr(sys, "argv", [argv0])
        assert prog(module) == f"python -m {module}"
    monkeypatch.setattr(sys, "argv", [])
    assert prog(module) == f"python -m {module}"


def test_homework_subcommand_usage_names_the_script(monkeypatch, capsys):
    main = importlib.import_module("decoding_gpt.tools.homework").main
    monkeypatch.setattr(sys, "argv", ["/venv/bin/dgpt-homework"])
    with pytest.raises(SystemExit):
        main(["grade", "--help"])
    assert capsys.readouterr().out.startswith("usage: dgpt-homework grade ")
