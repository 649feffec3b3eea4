"""The built wheel: only ``invar_rag_integrations`` at top level, and the training commands run
from it outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_one_package_and_trains_outside_the_repository(
        tmp_path: Path, retriever_config: Callable[..., Path]) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT),
                    "-w", str(dist)], check=True, capture_output=True)
    [wheel] = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/", 1)[0] for n in names} == {"invar_rag_integrations",
                                                  wheel.name.split("-py")[0] + ".dist-info"}
    assert "invar_rag_integrations/training/train_retriever.py" in names
    assert "invar_rag_integrations/demo/system/invar_rag.json" in names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    config = retriever_config(work, num_train_epochs=1, index_after_training=False)
    probe = "import invar_rag_integrations as p, sys; print(p.__file__)"
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    found = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, check=True,
                           capture_output=True, text=True).stdout
    assert found.startswith(str(site))  # the installed copy, not the repository
    run = subprocess.run([sys.executable, "-m", "invar_rag_integrations.cli", "train-retriever",
                          str(config)], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    manifest = json.loads((work / "system" / "invar_rag.json").read_text())
    assert "retriever" in manifest
