"""Generation: the prompt template and the HF generator backend."""

from __future__ import annotations

from .hf import Generation, HFGenerator
from .prompts import FittedPrompt, PromptTemplate

__all__ = ["FittedPrompt", "Generation", "HFGenerator", "PromptTemplate"]
