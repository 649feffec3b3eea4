"""Execute the tutorial notebooks top to bottom and save them with their outputs
(``make notebooks``); ``tests/test_notebooks.py`` re-executes them in memory in CI."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def run(path: Path) -> nbformat.NotebookNode:
    """``path`` executed from the repository root (nothing is written)."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    return notebook


def main(names: list[str]) -> None:
    paths = [ROOT / "notebooks" / f"{n}.ipynb" for n in names] if names else \
        sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        started = time.perf_counter()
        nbformat.write(run(path), path)
        print(f"{path.name}: executed and saved in {time.perf_counter() - started:.0f} s",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
