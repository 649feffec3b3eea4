"""The two-stage Invar retriever: MiniLM (or RRF of BM25 and MiniLM) proposes candidates, the
Invar scorer reads each one with the question, and the fused score ranks them.

Stage 1 hands stage 2 what it computed: the queries' coarse vectors (one MiniLM encoding per
query, for the search and the cosine term) and BM25's corpus scores (one BM25 pass per query,
for the search and the relative BM25 term).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Passage, load_passages
from ..retrieval.base import MANIFEST as INDEX_MANIFEST
from ..retrieval.base import (
    PASSAGES_FILE,
    Retriever,
    SearchResult,
    check_k,
    check_queries,
    read_saved_ids,
    read_saved_manifest,
)
from ..retrieval.dense import encoder_identity
from ..retrieval.stage1 import bm25_part, dense_part, make_stage1
from .artifacts import load_reranker, zero_shot_reranker
from .reranker import Part, Stage2Reranker, ranking
from .scorer import InvarScorer
from .settings import InvarSettings

INDEX_DIR = "index"


@dataclass
class Proposal:
    """Stage 1's answer for a batch of queries: its candidates, the queries' coarse vectors
    and, with BM25 in stage 1, each query's BM25 score of every passage."""

    results: list[SearchResult]
    query_coarse: np.ndarray
    bm25: list[np.ndarray] | None


def corpus_fingerprint(passages: Sequence[Passage]) -> str:
    """A hash of the passages' ids and texts (what a saved index was built over)."""
    digest = hashlib.sha256()
    for p in passages:
        digest.update(json.dumps([p.id, p.title, p.text]).encode())
    return digest.hexdigest()


class TwoStageRetriever(Retriever):
    """Two-stage retrieval: stage 1 proposes ``settings.candidates`` passages per query, the
    Invar scorer reads each with the question, and the fused score ranks them.

    Load one with :meth:`from_pretrained` (a system directory) or :meth:`zero_shot`.

    Args:
        reranker: Stage 2 (scorer, coarse encoder, settings).
        system_hash: Identity of the scorer (``retriever.hash`` of the manifest).
        system_dir: The system directory, when it was loaded from one.
        show_progress: Progress bars while indexing.
        trained: Its scorer was trained (named ``invar``; else ``upr-zero-shot`` unless it has
            an adapter or a head).
    """

    kind = "invar"

    def __init__(self, reranker: Stage2Reranker, system_hash: str,
                 system_dir: str | os.PathLike[str] | None = None, show_progress: bool = True,
                 trained: bool = False):
        super().__init__()
        self.reranker, self.system_hash, self.trained = reranker, system_hash, trained
        self.system_dir = Path(system_dir).resolve() if system_dir is not None else None
        self.show_progress = show_progress
        self.stage1 = make_stage1(self.settings.stage1, reranker.coarse_encoder, show_progress,
                                  self.settings.coarse_windows)
        self.passages: dict[str, Passage] = {}
        self._vectors: np.ndarray | None = None  # stage 1's vectors, in index order
        self._rows: dict[str, int] = {}

    @property
    def settings(self) -> InvarSettings:
        return self.reranker.settings

    @property
    def scorer(self) -> InvarScorer:
        return self.reranker.scorer

    @property
    def coarse_encoder(self) -> Any:
        return self.reranker.coarse_encoder

    @property
    def name(self) -> str:
        untrained = not self.trained and self.scorer.adapter is None and self.scorer.head is None
        return "upr-zero-shot" if untrained else "invar"

    def identity(self) -> str:
        settings = json.dumps(asdict(self.settings), sort_keys=True)
        return f"{self.kind}:{self.system_hash}:{hashlib.sha256(settings.encode()).hexdigest()}"

    @classmethod
    def zero_shot(cls, base_model: str = "smollm2", coarse_encoder: str = "minilm",
                  settings: InvarSettings | None = None, precision: str = "auto",
                  **kwargs: Any) -> TwoStageRetriever:
        """The zero-shot two-stage retriever (no adapter: query likelihood, UPR)."""
        reranker, system_hash = zero_shot_reranker(base_model, coarse_encoder,
                                                   settings or InvarSettings(), precision)
        return cls(reranker, system_hash, **kwargs)

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str],
                        index: str | os.PathLike[str] | None = None,
                        base_model: str | None = None, precision: str = "auto",
                        **kwargs: Any) -> TwoStageRetriever:
        """Load a system's retriever and, if present, its saved index.

        Args:
            system_dir: The system directory (``invar_rag.json``).
            index: A saved index folder (default ``<system_dir>/index`` when it exists).
            base_model: Override the base model location (must be the same model).
            precision: Scorer precision (``auto``, ``float32``, ``bfloat16``).
            **kwargs: Passed to the constructor.
        """
        reranker, manifest = load_reranker(system_dir, base_model, precision)
        kwargs.setdefault("trained", "retriever" in manifest.get("metrics", {}))
        retriever = cls(reranker, manifest["retriever"]["hash"], system_dir, **kwargs)
        default = Path(system_dir) / INDEX_DIR
        if index is not None or (default / INDEX_MANIFEST).is_file():
            retriever.load_index(index if index is not None else default)
        return retriever

    def unindexed(self) -> TwoStageRetriever:
        """A retriever sharing this one's scorer and settings, without an index: for searching
        another corpus without replacing this one's index."""
        return TwoStageRetriever(self.reranker, self.system_hash, self.system_dir,
                                 self.show_progress, self.trained)

    # --- indexing -------------------------------------------------------------------------

    def _index(self, passages: list[Passage]) -> None:
        self.stage1.index(passages)
        self._attach_passages(passages)

    def _attach_passages(self, passages: list[Passage]) -> None:
        self.passages = {p.id: p for p in passages}
        dense = dense_part(self.stage1)
        self._vectors = dense.vectors()
        self._rows = {pid: i for i, pid in enumerate(dense.passage_ids)}

    # --- search ---------------------------------------------------------------------------

    def check_depth(self, k: int, name: str = "k") -> int:
        """Validate a result count: a positive integer no larger than the candidate depth (the
        two-stage search reads ``candidates`` passages per query)."""
        k = check_k(k, name)
        if k > self.settings.candidates:
            raise ValueError(f"{name} = {k} is larger than the retriever's candidate depth "
                             f"(candidates = {self.settings.candidates}); ask for at most "
                             f"{self.settings.candidates} or raise settings.candidates")
        return k

    def candidates(self, queries: list[str]) -> list[SearchResult]:
        """Stage 1 alone: ``settings.candidates`` passages per query."""
        return self.propose(queries).results

    def propose(self, queries: list[str]) -> Proposal:
        """Stage 1 with what it computed on the way: each query is encoded once and BM25 scores
        the corpus once, for the search and for the fused score's terms."""
        queries = check_queries(queries)
        self.check_indexed()
        depth = min(self.settings.candidates, len(self.passage_ids))
        query_coarse = self.reranker.coarse(queries)
        dense, bm25 = dense_part(self.stage1), bm25_part(self.stage1)
        if bm25 is None:
            return Proposal(dense.search_vectors(query_coarse, depth), query_coarse, None)
        child = min(self.stage1.child_depth(depth), len(self.passage_ids))
        corpus = bm25.corpus_scores(queries)
        found = {id(bm25): [bm25.top(scores, child) for scores in corpus],
                 id(dense): dense.search_vectors(query_coarse, child)}
        results = self.stage1.fuse([found[id(r)] for r in self.stage1.retrievers], depth)
        return Proposal(results, query_coarse, corpus)

    def passage_coarse(self, ids: Sequence[str]) -> np.ndarray:
        """The indexed coarse vectors ``c(d)`` of passages ``ids`` (their first windows')."""
        return dense_part(self.stage1).passage_vectors(self._vectors,
                                                       [self._rows[i] for i in ids])

    def passage_cosines(self, query_coarse: np.ndarray,
                        ids: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per query, the cosine of each of its passages ``ids`` as stage 1 scores it (the
        best window's with ``coarse_windows``)."""
        return dense_part(self.stage1).passage_cosines(
            query_coarse, [[self._rows[i] for i in row] for row in ids], self._vectors)

    def candidate_scores(self, queries: list[str], proposed: Sequence[SearchResult],
                         lm: Sequence[np.ndarray] | None = None,
                         query_coarse: np.ndarray | None = None,
                         bm25: Sequence[np.ndarray] | None = None) -> Part:
        """Stage 2: the fused score ``s`` and the scorer's ``r`` of each stage-1 candidate, in
        stage 1's order, and the tokens read per query (``lm``: the scorer's ``r`` of the
        candidates, ``query_coarse``: the queries' coarse vectors, ``bm25``: their BM25 corpus
        scores, when already computed)."""
        if query_coarse is None:
            query_coarse = self.reranker.coarse(queries)
        ids = [r.ids for r in proposed]
        return self.reranker.fused(queries, [[self.passages[i] for i in row] for row in ids],
                                   query_coarse, [self.passage_coarse(row) for row in ids],
                                   self.passage_cosines(query_coarse, ids),
                                   self.bm25_term(queries, ids, bm25)
                                   if self.settings.bm25_weight else None, lm)

    def bm25_term(self, queries: list[str], ids: list[list[str]],
                  corpus: Sequence[np.ndarray] | None = None) -> list[np.ndarray] | None:
        """The BM25 feature of each candidate (``None`` when stage 1 has no BM25); ``corpus``:
        the queries' BM25 corpus scores, when already computed."""
        bm25 = bm25_part(self.stage1)
        return bm25.relative_scores(queries, ids, corpus) if bm25 is not None else None

    def rerank_results(self, queries: list[str], proposed: Sequence[SearchResult], k: int,
                       candidate_scores: Callable[..., Part] | None = None,
                       proposal: Proposal | None = None) -> list[SearchResult]:
        """Stage 2 over stage-1 results: the top ``k`` of each, scored by their relevance
        probability and ranked by it (``reranker.ranking``), the scorer reading as many
        candidates as ``read_first`` / ``stop_margin`` say (in fused-score units; an unread
        candidate's probability comes from its stage-1 features); ``candidate_scores`` replaces
        :meth:`candidate_scores` (e.g. one reading cached scorer outputs). ``proposal``: what
        stage 1 computed for these queries (else the queries are encoded here, once)."""
        candidate_scores = candidate_scores or self.candidate_scores
        query_coarse = proposal.query_coarse if proposal else self.reranker.coarse(queries)
        corpus = proposal.bm25 if proposal else None

        def score(picked: list[int], parts: list[slice]) -> Part:
            return candidate_scores(
                [queries[i] for i in picked],
                [SearchResult(proposed[i].ids[part], proposed[i].scores[part])
                 for i, part in zip(picked, parts)], query_coarse=query_coarse[picked],
                bm25=[corpus[i] for i in picked] if corpus is not None else None)

        settings = self.settings
        steps = self.reranker.read_in_steps(
            [len(r.ids) for r in proposed], min(settings.read_first, settings.candidates),
            settings.stop_margin, score)
        tables, _ = self.candidate_features(queries, proposed, steps.lm, query_coarse, corpus)
        found = []
        for result, r, probability in zip(proposed, steps.lm,
                                          self.reranker.probabilities("retriever", tables)):
            order = ranking(probability, np.isfinite(r))[:k]
            found.append(SearchResult([result.ids[j] for j in order],
                                      [float(probability[j]) for j in order]))
        return found

    def candidate_features(self, queries: list[str], proposed: Sequence[SearchResult],
                           lm: Sequence[np.ndarray], query_coarse: np.ndarray,
                           bm25: Sequence[np.ndarray] | None = None,
                           prior: np.ndarray | None = None,
                           ) -> tuple[list[dict[str, np.ndarray]], list[int]]:
        """What the calibrators read of each stage-1 candidate (``Stage2Reranker.features``
        with the stage-1 terms: BM25, rank, stage 1's score; ``lm``: ``r``, NaN where
        unread), and the tokens read for it per query."""
        ids = [r.ids for r in proposed]
        return self.reranker.features(
            queries, [[self.passages[i] for i in row] for row in ids], lm,
            self.passage_cosines(query_coarse, ids), prior,
            bm25=self.bm25_term(queries, ids, bm25), rank=[np.arange(len(row)) for row in ids],
            stage1=[r.scores for r in proposed])

    def _search(self, queries: list[str], k: int) -> list[SearchResult]:
        proposal = self.propose(queries)
        return self.rerank_results(queries, proposal.results, k, proposal=proposal)

    # --- persistence ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str],
             passages: Sequence[Passage] | None = None) -> Path:
        """Save stage 1's index and the passage texts (the scorer reads them) to ``path``."""
        return super().save(path, passages if passages is not None
                            else [self.passages[i] for i in self.passage_ids])

    def _save_state(self, path: Path) -> dict[str, Any]:
        self.stage1.save(path / "stage1")
        system = os.path.relpath(self.system_dir, path.resolve()) if self.system_dir else None
        return {"system": system, "stage1": self.settings.stage1,
                "coarse_windows": self.settings.coarse_windows,
                "coarse_encoder": encoder_identity(self.coarse_encoder),
                "corpus": corpus_fingerprint([self.passages[i] for i in self.passage_ids])}

    def load_index(self, path: str | os.PathLike[str]) -> None:
        """Load an index saved by :meth:`save`; its stage 1 must be this retriever's."""
        path = Path(path)
        config = read_saved_manifest(path)
        if config.get("kind") != self.kind:
            raise ValueError(f"{path}: a {config.get('kind')!r} index, not an Invar index")
        self._attach_index(path, config)

    def _attach_index(self, path: Path, config: dict[str, Any]) -> None:
        if config.get("stage1") != self.settings.stage1 or \
                config.get("coarse_windows", False) != self.settings.coarse_windows or \
                config.get("coarse_encoder") != encoder_identity(self.coarse_encoder):
            raise ValueError(
                f"{path}: this index was built for stage 1 {config.get('stage1')!r} (coarse "
                f"windows {config.get('coarse_windows', False)}) with coarse encoder "
                f"{str(config.get('coarse_encoder'))[:40]}, but the retriever uses "
                f"{self.settings.stage1!r} (coarse windows {self.settings.coarse_windows}) with "
                f"{str(encoder_identity(self.coarse_encoder))[:40]}; re-index with "
                "`invar-rag index`")
        passages = load_passages(path / PASSAGES_FILE)
        if corpus_fingerprint(passages) != config.get("corpus"):
            raise ValueError(f"{path}: {PASSAGES_FILE} is not the corpus this index was built "
                             "over (its texts or ids changed); re-index")
        stage1 = Retriever.load(path / "stage1")
        if stage1.passage_ids != [p.id for p in passages]:
            raise ValueError(f"{path}: the stage-1 index holds other passages than "
                             f"{PASSAGES_FILE}; re-index")
        self.stage1 = stage1
        self.passage_ids = read_saved_ids(path)
        self._attach_passages(passages)

    @classmethod
    def _load_state(cls, path: Path, config: dict[str, Any]) -> TwoStageRetriever:
        if config.get("system") is None:
            raise ValueError(f"{path}: this index belongs to a retriever without a system "
                             "directory; load it with TwoStageRetriever.load_index")
        retriever = cls.from_pretrained((path / config["system"]).resolve(), index=None)
        retriever._attach_index(path, config)
        return retriever
