"""A system's retriever on disk: saving the scorer's trained parts and its calibration with its
manifest entry, loading them back after checking identities and hash, and the zero-shot
retriever's parts."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..models.chat_template import resolve_chat_template
from ..models.registry import hash_file
from ..system import (
    FORMAT,
    HEAD_FILE,
    MANIFEST,
    PROJECTOR_FILE,
    base_of,
    is_system_dir,
    model_identity,
    read_manifest,
    write_manifest,
    write_stage,
)
from .calibration import Calibration, zero_shot_calibration
from .projector import Projector, zero_head
from .reranker import Stage2Reranker
from .scorer import InvarScorer
from .settings import RETRIEVER_ADAPTER, InvarSettings

ZERO_SHOT_BASE = "smollm2"  # the base model the embedded calibration was fitted for
UNCALIBRATED = ("{what}: its scores have not been calibrated (a system written before "
                "calibration, or settings the embedded calibration was not fitted for); the "
                "relevance probabilities use the embedded zero-shot calibration instead. Run "
                "`invar-rag calibrate` to fit its own")


def retriever_hash(settings: InvarSettings | dict[str, Any], base_identity: str,
                   coarse_identity: str, *weights: Path | None,
                   calibration: Calibration | None = None) -> str:
    """Identity of a scorer: its settings (as the manifest stores them), both models, its
    trained weight files (adapter, projector, head; ``None`` where it has none) and its
    calibration (a system written before calibration has none: its hash is unchanged)."""
    stored = settings if isinstance(settings, dict) else asdict(settings)
    parts = [json.dumps(stored, sort_keys=True), base_identity, coarse_identity,
             *(hash_file(w) if w is not None else "none" for w in weights)]
    if calibration is not None:
        parts.append(calibration.fingerprint())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


# which candidates are read, how deep and in what order: not how one is scored
POLICY_FIELDS = ("candidates", "read_first", "stop_margin")


def fallback_calibration(what: str) -> Calibration:
    """The embedded zero-shot calibration for a scorer it was not fitted for, said once."""
    warnings.warn(UNCALIBRATED.format(what=what), stacklevel=3)
    return zero_shot_calibration(calibrated=False)


def embedded_calibration(base_name: str, settings: InvarSettings, what: str) -> Calibration:
    """The embedded zero-shot calibration: fitted for the zero-shot scorer on the embedded base
    model with the default settings (the early stop and the order apart); for anything else it
    is a fallback."""
    scored = {k: v for k, v in asdict(settings).items() if k not in POLICY_FIELDS}
    defaults = {k: v for k, v in asdict(InvarSettings()).items() if k not in POLICY_FIELDS}
    if base_name != ZERO_SHOT_BASE or scored != defaults:
        return fallback_calibration(what)
    return zero_shot_calibration()


def zero_shot_reranker(base_model: str, coarse_encoder: str, settings: InvarSettings,
                       precision: str = "auto") -> tuple[Stage2Reranker, str]:
    """Stage 2 with the base LM and no adapter, and its hash."""
    from ..models import load_base_lm, load_coarse_encoder

    lm, tokenizer = load_base_lm(base_model)
    coarse = load_coarse_encoder(coarse_encoder)
    # the chat form as text ("model": the tokenizer's own), as a saved system keeps it
    settings = replace(settings, chat_template=resolve_chat_template(settings.chat_template,
                                                                     tokenizer))
    if settings.num_soft_tokens or settings.head:
        raise ValueError("soft tokens and a head need trained weights; the zero-shot scorer has "
                         "none (set num_soft_tokens = 0 and head = False)")
    scorer = InvarScorer(lm, tokenizer, settings.scorer_settings(), precision=precision)
    calibration = embedded_calibration(base_model, settings, f"the zero-shot {base_model} scorer")
    digest = retriever_hash(settings, lm.invar_source.identity, coarse.invar_source.identity,
                            calibration=calibration)
    return Stage2Reranker(scorer, coarse, settings, calibration), digest


def save_retriever(reranker: Stage2Reranker, path: str | os.PathLike[str],
                   training_args: dict[str, Any] | None = None,
                   metrics: dict[str, Any] | None = None) -> Path:
    """Save the scorer (its ``retriever`` adapter and projector, when it has them), its
    calibration (when fitted for it: a fallback is not stored) and its manifest entry into
    system directory ``path``; other entries (the generator) are kept.

    Raises:
        ValueError: The directory's manifest names another base model.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    scorer = reranker.scorer
    base = model_identity(base_of(scorer.lm))
    coarse = model_identity(reranker.coarse_encoder)
    manifest = read_manifest(path) if is_system_dir(path) else {"format": FORMAT}
    if manifest.get("base_model", base)["identity"] != base["identity"]:
        raise ValueError(f"{path}: the system's base model is {manifest['base_model']['name']!r} "
                         f"({manifest['base_model']['identity']}), but the retriever uses "
                         f"{base['name']!r} ({base['identity']})")
    adapter = projector = head = None
    if scorer.adapter is not None:
        scorer.lm.save_pretrained(str(path), selected_adapters=[scorer.adapter])
        if scorer.adapter != RETRIEVER_ADAPTER:  # peft writes other adapters into a subfolder
            raise ValueError(f"the scorer's adapter must be named {RETRIEVER_ADAPTER!r}")
        adapter = path / RETRIEVER_ADAPTER / "adapter_model.safetensors"
    if scorer.projector is not None:
        projector = path / PROJECTOR_FILE
        scorer.projector.save(projector)
    if scorer.head is not None:
        from safetensors.torch import save_file

        head = path / HEAD_FILE
        save_file({k: v.detach().cpu().contiguous() for k, v in scorer.head.state_dict().items()},
                  str(head))
    calibration = reranker.calibration if reranker.calibration.calibrated else None
    manifest.update(base_model=base, coarse_encoder=coarse, format=FORMAT)
    write_stage(path, manifest, "retriever", {
        "adapter": scorer.adapter, "projector": PROJECTOR_FILE if projector else None,
        "head": HEAD_FILE if head else None, "settings": asdict(reranker.settings),
        "calibration": calibration.to_dict() if calibration else None,
        "hash": retriever_hash(reranker.settings, base["identity"], coarse["identity"], adapter,
                               projector, head, calibration=calibration),
    }, training_args, metrics)
    return path


def weight_files(path: Path, entry: dict[str, Any]) -> tuple[Path | None, ...]:
    """The adapter, projector and head files of a manifest's retriever entry (``None`` where
    it has none), checked to exist."""
    found = (path / entry["adapter"] / "adapter_model.safetensors" if entry["adapter"] else None,
             path / entry["projector"] if entry["projector"] else None,
             path / entry["head"] if entry.get("head") else None)
    for file in found:
        if file is not None and not file.is_file():
            raise FileNotFoundError(f"retriever file missing: {file}")
    return found


def store_calibration(path: Path, calibration: Calibration, report: dict[str, Any]) -> None:
    """Store ``calibration`` in system ``path``'s retriever entry (its hash renewed, the
    manifest's format raised) and ``report`` under ``metrics.calibration``; the rest of the
    manifest (training records, the generator) is kept."""
    manifest = read_manifest(path)
    entry = manifest.get("retriever")
    if entry is None:
        raise ValueError(f"{path / MANIFEST}: this system has no retriever to calibrate")
    entry["calibration"] = calibration.to_dict()
    entry["hash"] = retriever_hash(entry["settings"], manifest["base_model"]["identity"],
                                   manifest["coarse_encoder"]["identity"],
                                   *weight_files(path, entry), calibration=calibration)
    manifest["format"] = FORMAT
    manifest.setdefault("metrics", {})["calibration"] = report
    write_manifest(path, manifest)


def load_reranker(path: str | os.PathLike[str], base_model: str | None = None,
                  precision: str = "auto") -> tuple[Stage2Reranker, dict[str, Any]]:
    """Load a system's scorer: the base LM (with the ``retriever`` adapter when the system has
    one), the projector and the coarse encoder, after checking their identities and hash.

    Args:
        path: System directory.
        base_model: Load this base model instead of the one the manifest names; it must be
            the same model (same identity), or loading fails naming both.
        precision: Scorer precision (``auto``, ``float32``, ``bfloat16``).

    Returns:
        ``(reranker, manifest)``.
    """
    from peft import PeftModel

    from ..models import load_base_lm, load_coarse_encoder

    path = Path(path)
    manifest = read_manifest(path)
    entry = manifest.get("retriever")
    if entry is None:
        raise ValueError(f"{path / MANIFEST}: this system has no retriever")
    try:
        settings = InvarSettings(**entry["settings"])
    except TypeError as err:
        raise ValueError(f"{path / MANIFEST}: retriever settings of another format ({err}); "
                         "this system was written by an older version: retrain it") from None
    lm, tokenizer = load_base_lm(base_model or manifest["base_model"]["name"])
    found, expected = lm.invar_source.identity, manifest["base_model"]["identity"]
    if found != expected:
        raise ValueError(f"{path}: the retriever was trained on base model "
                         f"{manifest['base_model']['name']!r} ({expected}), but "
                         f"{lm.invar_source.name!r} is {found}; use the same base model")
    coarse = load_coarse_encoder(manifest["coarse_encoder"]["name"])
    if coarse.invar_source.identity != manifest["coarse_encoder"]["identity"]:
        raise ValueError(f"{path}: trained with coarse encoder "
                         f"{manifest['coarse_encoder']['identity']}, but "
                         f"{manifest['coarse_encoder']['name']!r} is now "
                         f"{coarse.invar_source.identity}")
    adapter, projector_file, head_file = weight_files(path, entry)
    stored = entry.get("calibration")
    calibration = Calibration.from_dict(stored) if stored else None
    # the hash covers the settings as stored: a manifest written before a setting existed
    # still loads, and the setting takes its default
    digest = retriever_hash(entry["settings"], expected, coarse.invar_source.identity, adapter,
                            projector_file, head_file, calibration=calibration)
    if digest != entry["hash"]:
        raise ValueError(f"{path}: the retriever's settings or weights differ from the ones the "
                         f"manifest was written for (hash {digest[:12]} != {entry['hash'][:12]})")
    if adapter is not None:
        lm = PeftModel.from_pretrained(lm, str(adapter.parent), adapter_name=RETRIEVER_ADAPTER)
        lm.eval()
    projector = Projector.from_file(projector_file) if projector_file is not None else None
    head = None
    if head_file is not None:
        from safetensors.torch import load_file

        state = load_file(str(head_file))
        head = zero_head(state["weight"].shape[1])
        head.load_state_dict(state)
    scorer = InvarScorer(lm, tokenizer, settings.scorer_settings(),
                         RETRIEVER_ADAPTER if adapter is not None else None, projector, head,
                         precision=precision)
    if calibration is None:
        calibration = fallback_calibration(str(path))
    return Stage2Reranker(scorer, coarse, settings, calibration), manifest
