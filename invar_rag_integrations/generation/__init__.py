"""Generation: the prompt template and the HF generator backend."""

from __future__ import annotations

from .hf import Generation, HFGenerator
from .prompts import PromptTemplate

__all__ = ["Generation", "HFGenerator", "PromptTemplate"]
