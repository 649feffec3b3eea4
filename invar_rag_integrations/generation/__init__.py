"""Generation: the prompt template and the HF generator backend (loaded on first use, so the
command line reads :data:`GENERATION_BACKENDS` without torch)."""

from __future__ import annotations

from typing import Any

GENERATION_BACKENDS = ("hf", "vllm", "vllm-merged")

__all__ = ["FittedPrompt", "GENERATION_BACKENDS", "Generation", "HFGenerator", "PromptTemplate"]


def __getattr__(name: str) -> Any:
    if name in ("Generation", "HFGenerator"):
        from . import hf

        return getattr(hf, name)
    if name in ("FittedPrompt", "PromptTemplate"):
        from . import prompts

        return getattr(prompts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
