"""The layers hold where import analysis cannot see: the package loads its own modules with
plain imports, never by a name in a string (``require`` / ``importlib``), outside the CLI's lazy
dispatch."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "invar_rag_integrations"


def test_no_module_of_the_package_imports_its_own_modules_by_name():
    by_name = re.compile(r"""(require|import_module)\(\s*f?["'](invar_rag_integrations|\.)""")
    found = [f"{path.relative_to(PACKAGE)}:{number}"
             for path in PACKAGE.rglob("*.py") if "cli" not in path.relative_to(PACKAGE).parts
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if by_name.search(line)]
    assert found == []


def test_no_module_of_the_package_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_help_and_argument_errors_answer_before_torch_loads():
    import subprocess
    import sys

    probe = ("import sys\nfrom invar_rag_integrations.cli import main\n"
             "for argv in (['--help'], ['serve', '--help'], ['serve']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print('torch' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           timeout=120, check=True)
    assert found.stdout.strip().splitlines()[-1] == "False"


def test_the_names_the_readme_used_still_import_with_a_warning():
    import pytest

    from invar_rag_integrations import invar, retrieval

    for old, new in (("InvarRetriever", "TwoStageRetriever"), ("InvarReranker", "Stage2Reranker"),
                     ("InvarScorer", "InvarScorer"), ("InvarSettings", "InvarSettings")):
        with pytest.warns(DeprecationWarning, match=f"moved to invar_rag_integrations.invar.{new}"):
            assert getattr(retrieval, old) is getattr(invar, new)
