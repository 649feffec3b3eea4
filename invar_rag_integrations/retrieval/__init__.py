"""Retrievers behind one interface: BM25 and dense baselines (Invar joins them)."""

from __future__ import annotations

from pathlib import Path

from .base import Retriever, SearchResult
from .bm25 import BM25Retriever
from .dense import DenseRetriever

__all__ = ["BM25Retriever", "DenseRetriever", "Retriever", "SearchResult", "make_retriever"]


def make_retriever(spec: str) -> Retriever:
    """``bm25`` or ``minilm`` (an empty retriever to index), or the folder of a saved retriever."""
    if spec == "bm25":
        return BM25Retriever()
    if spec == "minilm":
        return DenseRetriever("minilm")
    if Path(spec).is_dir():
        return Retriever.load(spec)
    raise ValueError(
        f"unknown retriever {spec!r}: use 'bm25', 'minilm' or a saved retriever folder")
