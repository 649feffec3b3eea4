"""One directory per trained system, described by ``invar_rag.json`` (DESIGN.md §3).

Layout: ``invar_rag.json`` (manifest), ``retriever/`` (PEFT adapter, safetensors),
``projector.safetensors`` and, once indexed, ``index/`` (FAISS index + passage ids). Weights are
read with safetensors only. ``retriever.hash`` identifies the passage vectors: it covers the
adapter and projector weights, the representation settings and both models' identities, and
every saved index records it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..models.registry import hash_file
from .invar import RETRIEVER_ADAPTER, InvarEncoder, InvarSettings, projector_from_file

MANIFEST = "invar_rag.json"
FORMAT = "invar-rag/1"
PROJECTOR_FILE = "projector.safetensors"


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
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{file}: unknown manifest format {manifest.get('format')!r}, "
                         f"expected {FORMAT!r}")
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
    """Record one trained stage (``retriever`` or ``generator``) with its training arguments
    and metrics in the manifest, and write it."""
    manifest[stage] = entry
    if training_args is not None:
        manifest.setdefault("training", {})[stage] = training_args
    if metrics is not None:
        manifest.setdefault("metrics", {})[stage] = metrics
    write_manifest(path, manifest)


def retriever_hash(path: Path, settings: InvarSettings, base_identity: str,
                   coarse_identity: str) -> str:
    """Identity of the passage vectors a saved retriever produces."""
    parts = [hash_file(path / RETRIEVER_ADAPTER / "adapter_model.safetensors"),
             hash_file(path / PROJECTOR_FILE), json.dumps(settings.index_fields(), sort_keys=True),
             base_identity, coarse_identity]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def model_identity(model: Any) -> dict[str, str]:
    source = getattr(model, "invar_source", None)
    if source is None:
        raise ValueError("models must be loaded with load_base_lm / load_coarse_encoder so the "
                         "manifest can record their identity")
    return {"name": source.name, "identity": source.identity}


def save_retriever(encoder: InvarEncoder, path: str | os.PathLike[str],
                   training_args: dict[str, Any] | None = None,
                   metrics: dict[str, Any] | None = None) -> Path:
    """Save the ``retriever`` adapter, projector and manifest into system directory ``path``.

    An existing manifest keeps its other entries (e.g. the generator's).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    encoder.lm.save_pretrained(str(path), selected_adapters=[RETRIEVER_ADAPTER])
    save_file({k: v.detach().cpu().contiguous() for k, v in encoder.projector.state_dict().items()},
              str(path / PROJECTOR_FILE))
    manifest = read_manifest(path) if is_system_dir(path) else {"format": FORMAT}
    base = model_identity(encoder.lm.get_base_model())
    coarse = model_identity(encoder.coarse_encoder)
    manifest.update(base_model=base, coarse_encoder=coarse)
    write_stage(path, manifest, "retriever", {
        "adapter": RETRIEVER_ADAPTER, "projector": PROJECTOR_FILE,
        "settings": asdict(encoder.settings),
        "hash": retriever_hash(path, encoder.settings, base["identity"], coarse["identity"]),
    }, training_args, metrics)
    return path


def load_retriever_encoder(path: str | os.PathLike[str],
                           base_model: str | None = None) -> tuple[InvarEncoder, dict[str, Any]]:
    """Load the base LM with the ``retriever`` adapter, the projector and the coarse encoder.

    Args:
        path: System directory.
        base_model: Load this base model instead of the one the manifest names; it must be
            the same model (same identity), or loading fails naming both.

    Returns:
        ``(encoder, manifest)``.
    """
    from peft import PeftModel

    from ..models import load_base_lm, load_coarse_encoder

    path = Path(path)
    manifest = read_manifest(path)
    if "retriever" not in manifest:
        raise ValueError(f"{path / MANIFEST}: this system has no trained retriever")
    settings = InvarSettings(**manifest["retriever"]["settings"])
    lm, tokenizer = load_base_lm(base_model or manifest["base_model"]["name"])
    found, expected = lm.invar_source.identity, manifest["base_model"]["identity"]
    if found != expected:
        raise ValueError(f"{path}: the retriever adapter was trained on base model "
                         f"{manifest['base_model']['name']!r} ({expected}), but "
                         f"{lm.invar_source.name!r} is {found}; use the same base model")
    coarse = load_coarse_encoder(manifest["coarse_encoder"]["name"])
    if coarse.invar_source.identity != manifest["coarse_encoder"]["identity"]:
        raise ValueError(f"{path}: trained with coarse encoder "
                         f"{manifest['coarse_encoder']['identity']}, but "
                         f"{manifest['coarse_encoder']['name']!r} is now "
                         f"{coarse.invar_source.identity}")
    digest = retriever_hash(path, settings, expected, coarse.invar_source.identity)
    if digest != manifest["retriever"]["hash"]:
        raise ValueError(f"{path}: adapter or projector files differ from the ones the manifest "
                         f"was written for (hash {digest[:12]} != "
                         f"{manifest['retriever']['hash'][:12]})")
    lm = PeftModel.from_pretrained(lm, str(path / RETRIEVER_ADAPTER),
                                   adapter_name=RETRIEVER_ADAPTER)
    lm.eval()
    projector = projector_from_file(path / manifest["retriever"]["projector"], settings)
    return InvarEncoder(lm, tokenizer, coarse, settings, projector), manifest
