"""Retrievers behind one interface: BM25, dense and fusion baselines, and the Invar retriever."""

from __future__ import annotations

from pathlib import Path

from .artifacts import is_system_dir
from .base import Retriever, SearchResult
from .bm25 import BM25Retriever
from .dense import DenseRetriever
from .fusion import FusionRetriever, reciprocal_rank_fusion
from .invar import InvarEncoder, InvarSettings
from .invar_retriever import InvarRetriever

__all__ = ["BM25Retriever", "DenseRetriever", "FusionRetriever", "InvarEncoder", "InvarRetriever",
           "InvarSettings", "Retriever", "SearchResult", "make_retriever",
           "reciprocal_rank_fusion"]


def make_retriever(spec: str) -> Retriever:
    """``bm25``, ``minilm`` or ``rrf`` (their fusion) to be indexed, a trained system directory
    (``invar_rag.json``; with its saved index if it has one) or a saved index folder."""
    if spec == "bm25":
        return BM25Retriever()
    if spec == "minilm":
        return DenseRetriever("minilm")
    if spec == "rrf":
        return FusionRetriever([BM25Retriever(), DenseRetriever("minilm")])
    if is_system_dir(spec):
        return InvarRetriever.from_pretrained(spec)
    if Path(spec).is_dir():
        return Retriever.load(spec)
    raise ValueError(
        f"unknown retriever {spec!r}: use 'bm25', 'minilm', 'rrf', a trained system directory "
        "or a saved index folder")
