"""The system manifest every layer may read: one directory per trained system, described by
``invar_rag.json`` (DESIGN.md §3).

Layout: ``invar_rag.json`` (manifest), ``retriever/`` (the scorer's PEFT adapter, safetensors;
absent when the LM is not adapted), ``projector.safetensors`` (only with soft tokens),
``head.safetensors`` (only with a head), ``generator/`` and, once indexed, ``index/`` (stage-1
index + passages). Weights are read with safetensors only. ``retriever.hash`` identifies the
scorer: it covers its weight files, the settings and both models' identities.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "invar_rag.json"
FORMAT = "invar-rag/2"  # 2: the retriever entry holds its calibration
READABLE_FORMATS = ("invar-rag/1", FORMAT)
PROJECTOR_FILE = "projector.safetensors"
HEAD_FILE = "head.safetensors"


def is_system_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a trained-system directory (has an ``invar_rag.json``)."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of system directory ``path``."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not an Invar-RAG system directory: "
                                f"no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    if manifest.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{file}: unknown manifest format {manifest.get('format')!r}, "
                         f"expected one of {READABLE_FORMATS}")
    return manifest


def write_manifest(path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Write the manifest atomically (temporary file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=path)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    Path(tmp).replace(path / MANIFEST)


def write_stage(path: str | os.PathLike[str], manifest: dict[str, Any], stage: str,
                entry: dict[str, Any], training_args: dict[str, Any] | None,
                metrics: dict[str, Any] | None) -> None:
    """Record one stage (``retriever`` or ``generator``) with its training arguments and
    metrics (dropped when ``None``) in the manifest, and write it."""
    manifest[stage] = entry
    for key, value in (("training", training_args), ("metrics", metrics)):
        if value is not None:
            manifest.setdefault(key, {})[stage] = value
        else:  # a new entry never keeps the training record of the one it replaces
            manifest.get(key, {}).pop(stage, None)
    write_manifest(path, manifest)


def model_identity(model: Any) -> dict[str, str]:
    """``{name, identity}`` of a model loaded by ``load_base_lm`` / ``load_coarse_encoder``, as
    the manifest records it."""
    source = getattr(model, "invar_source", None)
    if source is None:
        raise ValueError("models must be loaded with load_base_lm / load_coarse_encoder so the "
                         "manifest can record their identity")
    return {"name": source.name, "identity": source.identity}


def base_of(lm: Any) -> Any:
    """The plain base model under a peft wrapper."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm
