"""Every retriever the package has, by name: the stage-1 baselines, the two-stage Invar
retriever, the baselines trained on the ODQA training questions, a trained system or a saved
index (what ``invar-rag eval-retrieval --retriever`` and the benchmarks take)."""

from __future__ import annotations

from pathlib import Path

from ..retrieval.base import Retriever
from ..system import is_system_dir

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
    from ..invar.two_stage import TwoStageRetriever
    from ..retrieval.bm25 import BM25Retriever
    from ..retrieval.dense import DenseRetriever
    from ..retrieval.fusion import FusionRetriever

    if spec == "bm25":
        return BM25Retriever()
    if spec in ("minilm", "minilm-windows"):
        return DenseRetriever("minilm", windows=spec.endswith("-windows"))
    if spec in ("rrf", "rrf-windows"):
        return FusionRetriever([BM25Retriever(),
                                DenseRetriever("minilm", windows=spec.endswith("-windows"))])
    if spec == "upr-zero-shot":
        return TwoStageRetriever.zero_shot()
    if spec in ("minilm-ft", "minilm-adapter", "ce-ft"):
        try:
            from .baselines import trained_baseline
        except ImportError as err:
            raise ImportError(f"training {spec!r} needs the train extra: pip install "
                              "'invar-rag-integrations[train]'") from err
        return trained_baseline(spec, data_dir)
    if is_system_dir(spec):
        return TwoStageRetriever.from_pretrained(spec)
    if Path(spec).is_dir():
        return Retriever.load(spec)
    raise ValueError(
        f"unknown retriever {spec!r}: use one of {', '.join(RETRIEVER_NAMES)}, a trained system "
        "directory or a saved index folder")
