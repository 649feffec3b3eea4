"""Retrievers behind one interface: BM25, dense and fusion baselines, and the two-stage Invar
retriever (stage 1 proposes, the Invar scorer reads each candidate with the question)."""

from __future__ import annotations

from pathlib import Path

from .artifacts import is_system_dir
from .base import Retriever, SearchResult
from .bm25 import BM25Retriever
from .cross_encoder import CrossEncoderRetriever
from .dense import DenseRetriever
from .fusion import FusionRetriever, reciprocal_rank_fusion
from .invar_retriever import InvarReranker, InvarRetriever, InvarSettings, fused_score
from .query_adapter import QueryAdapterRetriever
from .scorer import InvarScorer, ScorerSettings

__all__ = ["BM25Retriever", "CrossEncoderRetriever", "DenseRetriever", "FusionRetriever",
           "InvarReranker", "InvarRetriever", "InvarScorer", "InvarSettings",
           "QueryAdapterRetriever", "Retriever", "RETRIEVER_NAMES", "ScorerSettings",
           "SearchResult", "fused_score", "make_retriever", "reciprocal_rank_fusion"]

RETRIEVER_NAMES = ("bm25", "minilm", "minilm-windows", "rrf", "rrf-windows", "upr-zero-shot",
                   "minilm-ft", "minilm-adapter", "ce-ft")


def make_retriever(spec: str, data_dir: str | None = None) -> Retriever:
    """A retriever by name, to be indexed: ``bm25``, ``minilm``, ``rrf`` (their fusion), with
    ``-windows`` MiniLM reading long passages as windows (``DenseRetriever``),
    ``upr-zero-shot`` (the two-stage retriever with the zero-shot scorer), ``minilm-ft``,
    ``minilm-adapter`` or ``ce-ft`` (MiniLM fine-tuned, a query adapter, or a cross-encoder
    reranking RRF's candidates, trained on the ODQA training questions under ``data_dir``;
    trained once and cached); or a trained system directory
    (``invar_rag.json``; with its saved index if it has one) or a saved index folder."""
    if spec == "bm25":
        return BM25Retriever()
    if spec in ("minilm", "minilm-windows"):
        return DenseRetriever("minilm", windows=spec.endswith("-windows"))
    if spec in ("rrf", "rrf-windows"):
        return FusionRetriever([BM25Retriever(),
                                DenseRetriever("minilm", windows=spec.endswith("-windows"))])
    if spec == "upr-zero-shot":
        return InvarRetriever.zero_shot()
    if spec in ("minilm-ft", "minilm-adapter", "ce-ft"):
        from .._optional import require

        baselines = require("invar_rag_integrations.training.baselines", "train")
        return baselines.trained_baseline(spec, data_dir)
    if is_system_dir(spec):
        return InvarRetriever.from_pretrained(spec)
    if Path(spec).is_dir():
        return Retriever.load(spec)
    raise ValueError(
        f"unknown retriever {spec!r}: use one of {', '.join(RETRIEVER_NAMES)}, a trained system "
        "directory or a saved index folder")
