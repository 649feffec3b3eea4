"""Invar-RAG: invariant LLM-aligned retrieval for better generation, for real RAG stacks."""

from __future__ import annotations

__version__ = "0.1.0"
