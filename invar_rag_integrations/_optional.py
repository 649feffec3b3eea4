"""Lazy imports of optional heavy dependencies with an install hint naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with the ``pip install`` line that provides it.

    Args:
        module: Importable module name, e.g. ``"llama_index.core"``.
        extra: The project's extra that installs it, e.g. ``"llama-index"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module!r} is not installed; install it with: "
            f"pip install 'invar-rag-integrations[{extra}]'"
        ) from err
