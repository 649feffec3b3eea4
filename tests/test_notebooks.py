"""The tutorial notebooks: committed with the outputs of a real run (``make notebooks``), so
they read on the web with their plots, and re-executed here in memory on the embedded
default models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
from run_all import run  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


PLOTS = ("01_llamaindex_quickstart", "03_train_on_your_corpus", "04_serve_with_vllm")


def test_the_four_tutorials_exist() -> None:
    assert [p.stem for p in NOTEBOOKS] == ["01_llamaindex_quickstart", "02_langchain_rag_chain",
                                           "03_train_on_your_corpus", "04_serve_with_vllm"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_with_the_outputs_of_one_clean_run(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"{path.name}: not executed top to bottom in one run; refresh with make notebooks"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if path.stem in PLOTS:
        assert any("image/png" in o.get("data", {}) for o in outputs), "the plot is missing"


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path) -> None:
    from invar_rag_integrations.paths import data_dir

    if path.stem.startswith("03"):
        try:
            data_dir()
        except FileNotFoundError as err:
            pytest.skip(f"the ODQA data is needed: {err}")
    if path.stem.startswith("04"):
        pytest.importorskip("vllm", reason="the vllm extra is not installed (make install-vllm)")
    notebook = run(path)  # in memory: the committed file is left as it is
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
