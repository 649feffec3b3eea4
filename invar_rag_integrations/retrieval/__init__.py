"""Stage 1 behind one interface: BM25, dense and fusion baselines, the query adapter and the
cross-encoder baseline. The Invar core (stage 2) is ``invar_rag_integrations.invar``; every
retriever by name is ``invar_rag_integrations.training.catalog.make_retriever``."""

from __future__ import annotations

import warnings
from typing import Any

from .base import Retriever, SearchResult

__all__ = ["BM25Retriever", "CrossEncoderRetriever", "DenseRetriever", "FusionRetriever",
           "QueryAdapterRetriever", "Retriever", "SearchResult", "reciprocal_rank_fusion"]

# Names this module had before the Invar core moved to ``invar`` that the README and the
# notebooks used: still importable, with a warning, until 0.2.
_MOVED = {"InvarRetriever": "TwoStageRetriever", "InvarReranker": "Stage2Reranker",
          "InvarScorer": "InvarScorer", "InvarSettings": "InvarSettings"}


def __getattr__(name: str) -> Any:
    """The retrievers load on first use (the command line reads names without torch)."""
    if name in __all__:
        return getattr(stage1_modules()[name], name)
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"invar_rag_integrations.retrieval.{name} moved to "
                  f"invar_rag_integrations.invar.{_MOVED[name]}; the old name goes in 0.2",
                  DeprecationWarning, stacklevel=2)
    from .. import invar

    return getattr(invar, _MOVED[name])


def stage1_modules() -> dict[str, Any]:
    """Every retriever of this package by class name (importing them registers their kinds
    for ``Retriever.load``)."""
    from . import bm25, cross_encoder, dense, fusion, query_adapter

    return {"BM25Retriever": bm25, "CrossEncoderRetriever": cross_encoder,
            "DenseRetriever": dense, "FusionRetriever": fusion,
            "reciprocal_rank_fusion": fusion, "QueryAdapterRetriever": query_adapter}
