"""BM25 baseline (bm25s, English stop words, Snowball stemming)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import Passage
from .base import Retriever, SearchResult


class BM25Retriever(Retriever):
    """Sparse lexical retriever over title + text.

    Args:
        k1, b: BM25 parameters.
        stemmer_language: Snowball language for PyStemmer, or ``None`` for no stemming.
    """

    kind = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, stemmer_language: str | None = "english"):
        super().__init__()
        self.k1, self.b, self.stemmer_language = k1, b, stemmer_language
        self._bm25: Any = None

    def identity(self) -> str:
        return f"{self.kind}:k1={self.k1}:b={self.b}:{self.stemmer_language}"

    def _stemmer(self) -> Any:
        if not self.stemmer_language:
            return None
        import Stemmer

        return Stemmer.Stemmer(self.stemmer_language)

    def _tokenize(self, texts: list[str], as_ids: bool) -> Any:
        """Token ids (+ vocab) for indexing; token strings for queries, so that words missing
        from the corpus vocabulary are simply ignored."""
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer(), return_ids=as_ids,
                              show_progress=as_ids)

    def _index(self, passages: list[Passage]) -> None:
        import bm25s

        self._bm25 = bm25s.BM25(k1=self.k1, b=self.b)
        self._bm25.index(self._tokenize([p.full_text() for p in passages], True))

    def corpus_scores(self, queries: list[str]) -> list[np.ndarray]:
        """Per query, the BM25 score of every indexed passage (in index order): what search
        ranks and :meth:`relative_scores` divides, computed once for both."""
        tokens = self._tokenize(queries, False)
        empty = np.zeros(len(self.passage_ids), dtype=self._bm25.dtype)
        return [self._bm25.get_scores(list(t)) if len(t) else empty for t in tokens]

    def top(self, scores: np.ndarray, k: int) -> SearchResult:
        """The ``k`` best passages by one query's :meth:`corpus_scores` (bm25s's own selection,
        so the order is what ``BM25.retrieve`` gives)."""
        from bm25s.selection import topk

        best, rows = topk(scores, k=k, sorted=True)
        ids = self.passage_ids
        return SearchResult([ids[int(r)] for r in rows], [float(s) for s in best])

    def _search(self, queries: list[str], k: int) -> list[SearchResult]:
        return [self.top(scores, k) for scores in self.corpus_scores(queries)]

    def relative_scores(self, queries: list[str], ids: list[list[str]],
                        scores: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Each query's BM25 score of the passages ``ids``, divided by its best score over the
        whole corpus (so in ``[0, 1]`` whatever the query's length); ``scores``: the queries'
        :meth:`corpus_scores`, when already computed."""
        rows = {pid: i for i, pid in enumerate(self.passage_ids)}
        out = []
        for found, wanted in zip(scores if scores is not None else self.corpus_scores(queries),
                                 ids):
            best = float(found.max()) if len(found) else 0.0
            picked = np.array([found[rows[i]] for i in wanted], dtype=np.float32)
            out.append(picked / best if best > 0 else np.zeros_like(picked))
        return out

    def _save_state(self, path: Path) -> dict[str, Any]:
        self._bm25.save(path / "bm25")
        return {"k1": self.k1, "b": self.b, "stemmer_language": self.stemmer_language}

    @classmethod
    def _load_state(cls, path: Path, config: dict[str, Any]) -> BM25Retriever:
        import bm25s

        retriever = cls(**config)
        retriever._bm25 = bm25s.BM25.load(path / "bm25")
        return retriever
