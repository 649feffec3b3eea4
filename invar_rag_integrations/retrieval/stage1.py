"""Stage 1 of the two-stage retrievers: MiniLM, or reciprocal-rank fusion of BM25 and MiniLM,
over one coarse encoder (the Invar retriever and the cross-encoder baseline both build theirs
here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Retriever

if TYPE_CHECKING:
    from .bm25 import BM25Retriever
    from .dense import DenseRetriever

STAGE1 = ("minilm", "rrf")


def make_stage1(name: str, coarse_encoder: Any, show_progress: bool = True,
                windows: bool = False) -> Retriever:
    """The stage-1 retriever ``name`` (``minilm`` or ``rrf``) over ``coarse_encoder`` (reading
    long passages as ``windows``)."""
    from .bm25 import BM25Retriever
    from .dense import DenseRetriever
    from .fusion import FusionRetriever

    dense = DenseRetriever(coarse_encoder, show_progress=show_progress, windows=windows)
    if name == "minilm":
        return dense
    if name == "rrf":
        return FusionRetriever([BM25Retriever(), dense])
    raise ValueError(f"stage1 must be one of {STAGE1}, got {name!r}")


def dense_part(stage1: Retriever) -> DenseRetriever:
    """The MiniLM retriever inside a stage-1 retriever."""
    from .dense import DenseRetriever

    if isinstance(stage1, DenseRetriever):
        return stage1
    return next(r for r in stage1.retrievers if isinstance(r, DenseRetriever))


def bm25_part(stage1: Retriever) -> BM25Retriever | None:
    """The BM25 retriever inside a stage-1 retriever (``None`` without one)."""
    from .bm25 import BM25Retriever

    return next((r for r in getattr(stage1, "retrievers", ()) if isinstance(r, BM25Retriever)),
                None)
