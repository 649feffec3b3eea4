"""Embedded default models, loadable offline from PyPI packages, and any local HF folder."""

from __future__ import annotations

from .registry import (
    DEFAULT_BASE_MODEL,
    DEFAULT_COARSE_ENCODER,
    ModelSource,
    load_base_lm,
    load_coarse_encoder,
    resolve_base_model,
    resolve_coarse_encoder,
)

__all__ = [
    "DEFAULT_BASE_MODEL",
    "DEFAULT_COARSE_ENCODER",
    "ModelSource",
    "load_base_lm",
    "load_coarse_encoder",
    "resolve_base_model",
    "resolve_coarse_encoder",
]
