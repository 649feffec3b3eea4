"""Input checks for the framework shells: what they accept as the Invar core."""

from __future__ import annotations

from typing import Any

from ..retrieval.base import check_instance
from .reranker import Stage2Reranker
from .two_stage import TwoStageRetriever

HOW_TO_LOAD = "TwoStageRetriever.from_pretrained(system_dir) or InvarRAG(...).retriever"


def check_two_stage(retriever: Any) -> TwoStageRetriever:
    """A loaded two-stage Invar retriever, not a path."""
    return check_instance(retriever, TwoStageRetriever, "retriever", HOW_TO_LOAD)


def stage2_of(retriever: Any) -> Stage2Reranker:
    """Stage 2 of a loaded two-stage retriever, or a core reranker."""
    check_instance(retriever, (TwoStageRetriever, Stage2Reranker), "retriever", HOW_TO_LOAD)
    return retriever.reranker if isinstance(retriever, TwoStageRetriever) else retriever
