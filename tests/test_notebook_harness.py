"""The notebook tests really compare outputs: a changed number in a committed output fails.

Runs nbval in a subprocess on a copy of ``notebooks/00_setup.ipynb`` whose committed
output was edited, with the repository's own pytest configuration and sanitizer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP_NOTEBOOK = ROOT / "notebooks" / "00_setup.ipynb"


def _run_nbval(notebook: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(notebook),
            "-q",
            "-p",
            "no:xdist",
            "--rootdir",
            str(ROOT),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _edit_eigenvalue_output(notebook: dict) -> None:
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", []))
            if "eigenvalues of A A^T" in text:
                # 10.398 -> 11.398: a change far above the sanitizer's rounding.
                output["text"] = [text.replace("10.398", "11.398")]
                return
    raise AssertionError("the eigenvalue output of 00_setup.ipynb was not found")


@pytest.fixture
def notebook_copy(tmp_path_factory) -> Path:
    # Inside the repository so the root conftest.py and pyproject's addopts apply.
    folder = ROOT / "notebooks" / ".harness_check"
    folder.mkdir(exist_ok=True)
    yield folder / "edited_setup.ipynb"
    shutil.rmtree(folder, ignore_errors=True)


def test_changed_output_number_fails(notebook_copy: Path):
    notebook = json.loads(SETUP_NOTEBOOK.read_text())
    _edit_eigenvalue_output(notebook)
    notebook_copy.write_text(json.dumps(notebook))

    result = _run_nbval(notebook_copy)

    assert result.returncode == 1, result.stdout[-2000:]
    assert "11.398" in result.stdout and "1 failed" in result.stdout
