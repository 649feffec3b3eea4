"""The tutorial notebooks: committed without outputs (never stale), and run top to bottom on the
embedded default models."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_three_tutorials_exist() -> None:
    assert [p.stem for p in NOTEBOOKS] == ["01_llamaindex_quickstart", "02_langchain_rag_chain",
                                           "03_train_on_your_corpus"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    stale = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not stale, f"{path.name}: cells {stale} hold outputs; clear them before committing"


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path) -> None:
    from nbclient import NotebookClient

    from invar_rag_integrations.paths import data_dir

    if path.stem.startswith("03"):
        try:
            data_dir()
        except FileNotFoundError as err:
            pytest.skip(f"the ODQA data is needed: {err}")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
