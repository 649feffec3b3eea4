"""The two-stage Invar retriever: MiniLM (or RRF of BM25 and MiniLM) proposes candidates, the
Invar scorer reads each one with the question, and :func:`fused_score` ranks them.

``s(q, d) = w * cos(c(q), c(d)) / tau + r(q, d) [+ w_bm25 * bm25(q, d)]`` (DESIGN.md §2) is
computed by one function for serving and training. :class:`InvarReranker` is stage 2 alone over
any candidate list (the LlamaIndex postprocessor and the LangChain compressor wrap it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Passage, load_passages
from ..models.adapters import model_lock
from .base import MANIFEST as INDEX_MANIFEST
from .base import (
    PASSAGES_FILE,
    Retriever,
    SearchResult,
    check_instance,
    check_k,
    check_text,
    read_saved_ids,
    read_saved_manifest,
)
from .bm25 import BM25Retriever
from .dense import DenseRetriever, best_window_cosines, encoder_identity
from .early_stop import READ_FIRST, STOP_MARGIN, check_policy, read_until_clear
from .fusion import FusionRetriever
from .scorer import InvarScorer, ScorerSettings

INDEX_DIR = "index"
STAGE1 = ("minilm", "rrf")


@dataclass
class InvarSettings(ScorerSettings):
    """Scorer settings plus stage 1 and the fused score (stored in the manifest). The defaults
    are the zero-shot retriever's, chosen on the tuning slice of the training questions by
    ``python -m benchmarks.tune_zero_shot`` (``benchmarks/results/zero_shot_tuning.json``).

    Attributes:
        stage1: ``minilm`` or ``rrf`` (reciprocal-rank fusion of BM25 and MiniLM).
        candidates: Stage-1 candidates per query that the scorer reads (the largest ``k``).
        cos_weight: ``w`` in ``s = w * cos / tau + r + bm25_weight * bm25``.
        tau: Temperature of the coarse cosine.
        bm25_weight: Weight of the BM25 term (the candidate's BM25 score over the query's best
            in the corpus); needs BM25 in stage 1 (``rrf``). Over candidates from elsewhere
            (the reranker) there is no corpus to score against and the term is left out.
        coarse_windows: MiniLM reads a node longer than its limit (256 word pieces) as
            windows, and a node's cosine is its best window's, in stage 1 and in the fused
            score; without, MiniLM reads a node's beginning only.
        read_first: The scorer reads a query's first ``read_first`` candidates, and the rest
            only while their leader's fused score beats the runner-up's by less than
            ``stop_margin`` (``early_stop.py``); default ``min(2, candidates)``;
            ``read_first = candidates`` or ``stop_margin = inf`` reads every candidate.
        stop_margin: See ``read_first``.
    """

    stage1: str = "rrf"
    coarse_windows: bool = True
    candidates: int = 5
    cos_weight: float = 0.1
    tau: float = 0.05
    bm25_weight: float = 2.0
    read_first: int | None = None
    stop_margin: float = STOP_MARGIN

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage1 not in STAGE1:
            raise ValueError(f"stage1 must be one of {STAGE1}, got {self.stage1!r}")
        if self.candidates < 1 or self.tau <= 0:
            raise ValueError(f"need candidates >= 1 and tau > 0; got {self.candidates}, "
                             f"{self.tau}")
        if self.bm25_weight and self.stage1 != "rrf":
            raise ValueError(f"bm25_weight = {self.bm25_weight} needs BM25 in stage 1 "
                             f"(stage1 = 'rrf'), not {self.stage1!r}")
        if self.read_first is None:
            self.read_first = min(READ_FIRST, self.candidates)
        check_policy(self.read_first, self.stop_margin, self.candidates)

    def scorer_settings(self) -> ScorerSettings:
        """The stage-2 part of these settings."""
        names = {f.name for f in fields(ScorerSettings)}
        return ScorerSettings(**{k: v for k, v in asdict(self).items() if k in names})


def fused_score(lm_score: Any, cosine: Any, cos_weight: Any, tau: float, bm25: Any = None,
                bm25_weight: Any = 0.0) -> Any:
    """``s(q, d) = cos_weight * cos(c(q), c(d)) / tau + r(q, d) + bm25_weight * bm25(q, d)``:
    the one definition of the retriever's score, for numpy arrays (serving) and torch tensors
    (training, where the weights are learned parameters); ``bm25 = None`` leaves its term
    out."""
    score = cos_weight * cosine / tau + lm_score
    return score if bm25 is None else score + bm25_weight * bm25


def check_invar_retriever(retriever: Any) -> InvarRetriever:
    """For the framework wrappers: a loaded Invar retriever, not a path."""
    return check_instance(retriever, InvarRetriever, "retriever",
                          "InvarRetriever.from_pretrained(system_dir) or InvarRAG(...).retriever")


def stage2_of(retriever: Any) -> InvarReranker:
    """For the framework rerankers: stage 2 of a loaded Invar retriever, or a core reranker."""
    check_instance(retriever, (InvarRetriever, InvarReranker), "retriever",
                   "InvarRetriever.from_pretrained(system_dir) or InvarRAG(...).retriever")
    return retriever.reranker if isinstance(retriever, InvarRetriever) else retriever


class InvarReranker:
    """Stage 2 over any candidates: the Invar scorer fused with the coarse cosine.

    Args:
        scorer: The Invar scorer.
        coarse_encoder: The coarse ``SentenceTransformer`` (MiniLM).
        settings: The retriever settings (``cos_weight``, ``tau``).
    """

    def __init__(self, scorer: InvarScorer, coarse_encoder: Any, settings: InvarSettings):
        self.scorer, self.coarse_encoder, self.settings = scorer, coarse_encoder, settings

    def coarse(self, texts: Sequence[str]) -> np.ndarray:
        """``c(x)``: normalised coarse vectors (float32 ``[N, d_c]``)."""
        if not texts:
            return np.zeros((0, self.coarse_encoder.get_embedding_dimension()), np.float32)
        with model_lock(self.coarse_encoder):  # one encoder for all threads
            return self.coarse_encoder.encode(list(texts), batch_size=64,
                                              normalize_embeddings=True,
                                              convert_to_numpy=True).astype(np.float32)

    def _coarse_reader(self) -> DenseRetriever:
        """How the coarse encoder cuts texts (windows with ``coarse_windows``); no index."""
        return DenseRetriever(self.coarse_encoder, use_cache=False, show_progress=False,
                              windows=self.settings.coarse_windows)

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """One coarse vector per text, for a vector store (it holds one per text): with
        ``coarse_windows``, a text longer than MiniLM reads is the normalised mean of its
        windows' vectors (on the tuning slice, squad Acc@1 of MiniLM over 1,024-token nodes
        rose from .36 with the first window's vector to .51), else its beginning's vector."""
        reader = self._coarse_reader()
        pieces, starts = reader.pieces([Passage("", t) for t in texts])
        found = self.coarse(pieces)
        if len(pieces) == len(texts):
            return found
        pooled = np.stack([found[a:b].mean(0) for a, b in zip(starts[:-1], starts[1:])])
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True).clip(1e-12)

    def coarse_candidates(self, query_coarse: np.ndarray,
                          candidates: Sequence[Sequence[Passage | str]],
                          ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query, the coarse vector ``c(d)`` of each candidate ``[C, d_c]`` (its first
        window's: what soft tokens read) and its cosine with the query as stage 1 scores it
        (the best window's with ``coarse_windows``)."""
        reader = self._coarse_reader()
        vectors, cosines = [], []
        for query, cands in zip(query_coarse, candidates):
            texts, starts = reader.pieces([Passage("", c) if isinstance(c, str) else c
                                           for c in cands])
            found = self.coarse(texts)
            vectors.append(found[starts[:-1]])
            cosines += best_window_cosines(query[None], found, starts, [range(len(cands))])
        return vectors, cosines

    def scores(self, queries: Sequence[str], candidates: Sequence[Sequence[Passage | str]],
               query_coarse: np.ndarray | None = None,
               passage_coarse: Sequence[np.ndarray] | None = None,
               bm25: Sequence[np.ndarray] | None = None,
               lm: Sequence[np.ndarray] | None = None,
               cosines: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """``s(q, d)`` for each query's candidates; coarse vectors and cosines are computed
        when not given (the retriever passes the ones its index holds, and the BM25 term when
        it has one), and so is the scorer's ``r`` (``lm``: already computed, e.g. from a
        cache)."""
        if query_coarse is None:
            query_coarse = self.coarse(queries)
        if passage_coarse is None or cosines is None:
            passage_coarse, cosines = self.coarse_candidates(query_coarse, candidates)
        if lm is None:
            lm = self.scorer.score_batch(queries, candidates, query_coarse, passage_coarse)
        bm25 = bm25 if bm25 is not None else [None] * len(lm)
        return [fused_score(r, cos, self.settings.cos_weight, self.settings.tau, b,
                            self.settings.bm25_weight)
                for r, cos, b in zip(lm, cosines, bm25)]

    def rerank(self, query: str, candidates: Sequence[Passage | str],
               top_n: int | None = None, read_first: int | None = None,
               stop_margin: float = STOP_MARGIN) -> list[tuple[int, float]]:
        """``(index into candidates, s)`` of the best ``top_n`` candidates (default: all),
        best first; an empty candidate list gives an empty result.

        ``read_first``: read the first ``read_first`` candidates (in the given order: the
        retriever's), and the rest only while their leader's ``s`` beats the runner-up's by less
        than ``stop_margin`` (``early_stop.py``, the retriever's policy); candidates left unread
        follow the read ones in the given order, scored ``-inf``. ``None`` reads every one.
        """
        return self.rerank_batch([query], [candidates], [top_n], read_first, stop_margin)[0]

    def rerank_batch(self, queries: Sequence[str],
                     candidates: Sequence[Sequence[Passage | str]],
                     top_n: Sequence[int | None], read_first: int | None = None,
                     stop_margin: float = STOP_MARGIN) -> list[list[tuple[int, float]]]:
        """:meth:`rerank` for several queries, their candidates scored in one batch (what a
        service gathers from concurrent requests); ties keep the given order."""
        if not len(queries) == len(candidates) == len(top_n):
            raise ValueError(f"{len(queries)} queries, {len(candidates)} candidate lists and "
                             f"{len(top_n)} top_n values: one of each per query")
        for query, n in zip(queries, top_n):
            check_text(query)
            if n is not None:
                check_k(n, "top_n")
        if read_first is not None:
            check_policy(read_first, stop_margin)
        asked = [i for i, cands in enumerate(candidates) if cands]
        lists = [list(candidates[i]) for i in asked]
        texts = [queries[i] for i in asked]
        query_coarse = self.coarse(texts)  # once for both reading steps

        def score(picked: list[int], parts: list[slice]) -> list[np.ndarray]:
            return self.scores([texts[i] for i in picked],
                               [lists[i][part] for i, part in zip(picked, parts)],
                               query_coarse[picked])

        counts = [len(c) for c in lists]
        scored = read_until_clear(counts, read_first or max(counts), stop_margin, score) \
            if asked else []
        ranked: list[list[tuple[int, float]]] = [[] for _ in queries]
        for i, scores in zip(asked, scored):
            order = np.argsort(-scores, kind="stable")[:top_n[i]]
            ranked[i] = [(int(j), float(scores[j])) for j in order]
        return ranked


def top_k(ids: Sequence[str], scores: np.ndarray, k: int) -> SearchResult:
    """The ``k`` best of ``ids`` by ``scores``, best first (ties keep the given order)."""
    order = np.argsort(-scores, kind="stable")[:k]
    return SearchResult([ids[i] for i in order], [float(scores[i]) for i in order])


def make_stage1(name: str, coarse_encoder: Any, show_progress: bool = True,
                windows: bool = False) -> Retriever:
    """The stage-1 retriever ``name`` (``minilm`` or ``rrf``) over ``coarse_encoder`` (reading
    long passages as ``windows``)."""
    dense = DenseRetriever(coarse_encoder, show_progress=show_progress, windows=windows)
    if name == "minilm":
        return dense
    if name == "rrf":
        return FusionRetriever([BM25Retriever(), dense])
    raise ValueError(f"stage1 must be one of {STAGE1}, got {name!r}")


def dense_part(stage1: Retriever) -> DenseRetriever:
    """The MiniLM retriever inside a stage-1 retriever."""
    if isinstance(stage1, DenseRetriever):
        return stage1
    return next(r for r in stage1.retrievers if isinstance(r, DenseRetriever))


def corpus_fingerprint(passages: Sequence[Passage]) -> str:
    """A hash of the passages' ids and texts (what a saved index was built over)."""
    digest = hashlib.sha256()
    for p in passages:
        digest.update(json.dumps([p.id, p.title, p.text]).encode())
    return digest.hexdigest()


class InvarRetriever(Retriever):
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

    def __init__(self, reranker: InvarReranker, system_hash: str,
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
                  **kwargs: Any) -> InvarRetriever:
        """The zero-shot two-stage retriever (no adapter: query likelihood, UPR)."""
        from .artifacts import zero_shot_reranker

        reranker, system_hash = zero_shot_reranker(base_model, coarse_encoder,
                                                   settings or InvarSettings(), precision)
        return cls(reranker, system_hash, **kwargs)

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str],
                        index: str | os.PathLike[str] | None = None,
                        base_model: str | None = None, precision: str = "auto",
                        **kwargs: Any) -> InvarRetriever:
        """Load a system's retriever and, if present, its saved index.

        Args:
            system_dir: The system directory (``invar_rag.json``).
            index: A saved index folder (default ``<system_dir>/index`` when it exists).
            base_model: Override the base model location (must be the same model).
            precision: Scorer precision (``auto``, ``float32``, ``bfloat16``).
            **kwargs: Passed to the constructor.
        """
        from .artifacts import load_reranker

        reranker, manifest = load_reranker(system_dir, base_model, precision)
        kwargs.setdefault("trained", "retriever" in manifest.get("metrics", {}))
        retriever = cls(reranker, manifest["retriever"]["hash"], system_dir, **kwargs)
        default = Path(system_dir) / INDEX_DIR
        if index is not None or (default / INDEX_MANIFEST).is_file():
            retriever.load_index(index if index is not None else default)
        return retriever

    def unindexed(self) -> InvarRetriever:
        """A retriever sharing this one's scorer and settings, without an index: for searching
        another corpus without replacing this one's index."""
        return InvarRetriever(self.reranker, self.system_hash, self.system_dir,
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
        return self.stage1.search(queries, min(self.settings.candidates, len(self.passage_ids)))

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
                         query_coarse: np.ndarray | None = None) -> list[np.ndarray]:
        """Stage 2: the fused score ``s`` of each stage-1 candidate, in stage 1's order
        (``lm``: the scorer's ``r`` of the candidates, ``query_coarse``: the queries' coarse
        vectors, when already computed)."""
        if query_coarse is None:
            query_coarse = self.reranker.coarse(queries)
        ids = [r.ids for r in proposed]
        return self.reranker.scores(queries, [[self.passages[i] for i in row] for row in ids],
                                    query_coarse, [self.passage_coarse(row) for row in ids],
                                    self.bm25_term(queries, ids)
                                    if self.settings.bm25_weight else None, lm,
                                    self.passage_cosines(query_coarse, ids))

    def bm25_term(self, queries: list[str], ids: list[list[str]]) -> list[np.ndarray] | None:
        """The BM25 feature of each candidate (``None`` when stage 1 has no BM25)."""
        bm25 = next((r for r in getattr(self.stage1, "retrievers", ())
                     if isinstance(r, BM25Retriever)), None)
        return bm25.relative_scores(queries, ids) if bm25 is not None else None

    def rerank_results(self, queries: list[str], proposed: Sequence[SearchResult], k: int,
                       candidate_scores: Callable[..., list[np.ndarray]] | None = None,
                       ) -> list[SearchResult]:
        """Stage 2 over stage-1 results: the top ``k`` of each by the fused score, the scorer
        reading as many candidates as ``read_first`` / ``stop_margin`` say (unread ones follow
        in stage-1 order, scored ``-inf``); ``candidate_scores`` replaces
        :meth:`candidate_scores` (e.g. one reading cached scorer outputs). The queries are
        encoded once for both reading steps."""
        candidate_scores = candidate_scores or self.candidate_scores
        query_coarse = self.reranker.coarse(queries)

        def score(picked: list[int], parts: list[slice]) -> list[np.ndarray]:
            return candidate_scores(
                [queries[i] for i in picked],
                [SearchResult(proposed[i].ids[part], proposed[i].scores[part])
                 for i, part in zip(picked, parts)], query_coarse=query_coarse[picked])

        settings = self.settings
        scores = read_until_clear([len(r.ids) for r in proposed],
                                  min(settings.read_first, settings.candidates),
                                  settings.stop_margin, score)
        return [top_k(result.ids, found, k) for result, found in zip(proposed, scores)]

    def _search(self, queries: list[str], k: int) -> list[SearchResult]:
        return self.rerank_results(queries, self.candidates(queries), k)

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
    def _load_state(cls, path: Path, config: dict[str, Any]) -> InvarRetriever:
        if config.get("system") is None:
            raise ValueError(f"{path}: this index belongs to a retriever without a system "
                             "directory; load it with InvarRetriever.load_index")
        retriever = cls.from_pretrained((path / config["system"]).resolve(), index=None)
        retriever._attach_index(path, config)
        return retriever
