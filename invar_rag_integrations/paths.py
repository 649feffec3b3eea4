"""Where the project reads data from and caches derived files."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "INVAR_RAG_DATA"
CACHE_ENV = "INVAR_RAG_CACHE"


def cache_dir() -> Path:
    """The cache root: ``$INVAR_RAG_CACHE`` or ``~/.cache/invar-rag`` (created if missing)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "invar-rag").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The shared data folder: ``override``, else ``$INVAR_RAG_DATA``, else ``../shared/data``.

    Raises:
        FileNotFoundError: The folder does not exist; the message says how to point at one.
    """
    candidates = [override, os.environ.get(DATA_ENV)]
    chosen = next((c for c in candidates if c), None)
    path = Path(chosen).expanduser() if chosen else Path.cwd().parent / "shared" / "data"
    if not path.is_dir():
        source = "--data-dir" if override else (f"${DATA_ENV}" if chosen else "the default")
        raise FileNotFoundError(
            f"data folder {str(path)!r} (from {source}) does not exist. Point at the folder that "
            f"holds odqa/ and train/ with --data-dir DIR or the {DATA_ENV} environment variable."
        )
    return path
