"""Retrievers behind one interface: BM25 and dense baselines (Invar joins them)."""

from __future__ import annotations

from pathlib import Path

from .base import Retriever, SearchResult
from .bm25 import BM25Retriever
from .dense import DenseRetriever
from .fusion import FusionRetriever, reciprocal_rank_fusion

__all__ = ["BM25Retriever", "DenseRetriever", "FusionRetriever", "Retriever", "SearchResult",
           "make_retriever", "reciprocal_rank_fusion"]


def make_retriever(spec: str) -> Retriever:
    """``bm25``, ``minilm`` or ``rrf`` (their fusion) to be indexed, or a saved retriever."""
    if spec == "bm25":
        return BM25Retriever()
    if spec == "minilm":
        return DenseRetriever("minilm")
    if spec == "rrf":
        return FusionRetriever([BM25Retriever(), DenseRetriever("minilm")])
    if Path(spec).is_dir():
        return Retriever.load(spec)
    raise ValueError(
        f"unknown retriever {spec!r}: use 'bm25', 'minilm', 'rrf' or a saved retriever folder")
