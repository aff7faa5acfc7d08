"""Re-execute notebooks in place so their committed outputs are fresh.

    python scripts/refresh_notebook.py notebooks/00_setup.ipynb [more.ipynb ...]

Each notebook runs top to bottom in a new kernel from this environment, with the same
environment variables as ``make test`` (no progress bars, Agg backend, hub offline),
and is written back with its outputs and execution counts, which nbval compares
against. The wall time of each notebook is printed: keep it under 90 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ENVIRONMENT = {
    "TQDM_DISABLE": "1",
    "MPLBACKEND": "Agg",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "1",  # as under `make test`: same thread count, same numerics
}


def refresh(path: Path, timeout: int) -> float:
    """Execute ``path`` in place; return its wall time in seconds."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    notebook.metadata.pop("widgets", None)  # widget state holds random model ids
    nbformat.write(notebook, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="per-cell timeout, s")
    args = parser.parse_args(argv)
    os.environ.update(ENVIRONMENT)
    for path in args.notebooks:
        elapsed = refresh(path, args.timeout)
        print(f"{path}: executed in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
