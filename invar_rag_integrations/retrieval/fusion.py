"""Reciprocal-rank fusion (RRF) of several retrievers, itself a retriever."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import Passage
from .base import Retriever, SearchResult


def reciprocal_rank_fusion(rankings: Sequence[SearchResult], k: int,
                           rrf_k: int = 60) -> SearchResult:
    """Fuse one query's rankings: ``score(d) = sum_r 1 / (rrf_k + rank_r(d))`` (ranks from 1).

    Ties are broken by the order in which passages first appear (earlier rankings first).
    """
    scores: dict[str, float] = defaultdict(float)
    for ranking in rankings:
        for rank, pid in enumerate(ranking.ids, start=1):
            scores[pid] += 1.0 / (rrf_k + rank)
    best = sorted(scores.items(), key=lambda item: -item[1])[:k]
    return SearchResult([pid for pid, _ in best], [score for _, score in best])


class FusionRetriever(Retriever):
    """RRF over child retrievers, each searched to ``depth`` (Cormack et al. 2009).

    Args:
        retrievers: The retrievers to fuse (indexed together by :meth:`index`).
        depth: How many results of each child enter the fusion.
        rrf_k: The RRF constant.
    """

    kind = "rrf"

    def __init__(self, retrievers: Sequence[Retriever], depth: int = 100, rrf_k: int = 60):
        super().__init__()
        if len(retrievers) < 2:
            raise ValueError("fusion needs at least two retrievers")
        self.retrievers, self.depth, self.rrf_k = list(retrievers), depth, rrf_k
        if all(r.passage_ids for r in self.retrievers):
            self.passage_ids = list(self.retrievers[0].passage_ids)

    @property
    def name(self) -> str:
        return "rrf(" + "+".join(r.name for r in self.retrievers) + ")"

    def identity(self) -> str:
        parts = [r.identity() for r in self.retrievers]
        return f"{self.kind}:depth={self.depth}:k={self.rrf_k}:" + "+".join(parts)

    def _index(self, passages: list[Passage]) -> None:
        for retriever in self.retrievers:
            retriever.index(passages)

    def _search(self, queries: list[str], k: int) -> list[SearchResult]:
        return self.fuse([r.search(queries, self.child_depth(k)) for r in self.retrievers], k)

    def child_depth(self, k: int) -> int:
        """How deep each child is searched for ``k`` fused results."""
        return max(k, self.depth)

    def fuse(self, per_child: Sequence[Sequence[SearchResult]], k: int) -> list[SearchResult]:
        """Each query's top ``k`` by RRF over its children's results (searched to
        :meth:`child_depth`, in the order of ``retrievers``)."""
        return [reciprocal_rank_fusion(rankings, k, self.rrf_k) for rankings in zip(*per_child)]

    def _save_state(self, path: Path) -> dict[str, Any]:
        parts = [f"part-{i}" for i in range(len(self.retrievers))]
        for part, retriever in zip(parts, self.retrievers):
            retriever.save(path / part)
        return {"parts": parts, "depth": self.depth, "rrf_k": self.rrf_k}

    @classmethod
    def _load_state(cls, path: Path, config: dict[str, Any]) -> FusionRetriever:
        children = [Retriever.load(path / part) for part in config["parts"]]
        return cls(children, depth=config["depth"], rrf_k=config["rrf_k"])
