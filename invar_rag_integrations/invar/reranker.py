"""Stage 2 over any candidates: the Invar scorer fused with the coarse cosine (and BM25, when the
two-stage retriever has it), with the early stop wired once for every caller (the reranker, the
two-stage retriever, the framework shells, the rerank service), and the relevance probability
every caller hands out (``calibration.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import Passage
from ..models.adapters import model_lock
from ..models.encoding import PASSAGE, QUERY, encode
from ..retrieval.base import check_k, check_text
from ..retrieval.dense import DenseRetriever, best_window_cosines
from .calibration import Calibration, pair_features, usable_path, zero_shot_calibration
from .early_stop import STOP_MARGIN, check_policy, read_until_clear
from .fusion import settings_score
from .scorer import InvarScorer
from .settings import InvarSettings

# score(queries picked, their candidate slices) -> Part of each picked query
PartScorer = Callable[[list[int], list[slice]], "Part"]


@dataclass
class Part:
    """Stage 2 over each query's candidates (some of them, or after the early stop all of
    them): the fused scores ``s`` (``UNSCORED`` where unread), the scorer's ``r`` of each (NaN
    where unread), and the tokens the LM read per query."""

    fused: list[np.ndarray]
    lm: list[np.ndarray]
    tokens: list[int]


def ranking(probability: np.ndarray, read: np.ndarray) -> np.ndarray:
    """The order of one query's candidates, best first: those the LM read by their relevance
    probability (the read model increases with ``s``, so this is ``s``'s order), then those
    the early stop left unread (and nodes without text), by theirs; ties keep the given
    order."""
    probability = np.asarray(probability, np.float64)
    return np.lexsort((np.arange(len(probability)), -probability, ~np.asarray(read, bool)))


@dataclass
class Reranked:
    """One query's candidates ranked: ``(index into the candidates, relevance probability)``
    best first, ``fused``: each ranked candidate's fused score ``s`` (``UNSCORED`` where the
    early stop left it unread), and the tokens the LM read."""

    ranked: list[tuple[int, float]]
    fused: list[float]
    tokens: int


class Stage2Reranker:
    """Stage 2 over any candidate lists: the Invar scorer fused with the coarse cosine.

    Args:
        scorer: The Invar scorer.
        coarse_encoder: The coarse ``SentenceTransformer`` (MiniLM).
        settings: The retriever settings (``cos_weight``, ``tau``).
        calibration: Its relevance calibrators (default: the embedded zero-shot ones, marked
            as not fitted for this scorer).
    """

    def __init__(self, scorer: InvarScorer, coarse_encoder: Any, settings: InvarSettings,
                 calibration: Calibration | None = None):
        self.scorer, self.coarse_encoder, self.settings = scorer, coarse_encoder, settings
        self._calibration = calibration

    @property
    def calibration(self) -> Calibration:
        """The relevance calibrators (the embedded zero-shot ones, loaded on first use, when
        none were given)."""
        if self._calibration is None:
            self._calibration = zero_shot_calibration(calibrated=False)
        return self._calibration

    @calibration.setter
    def calibration(self, calibration: Calibration) -> None:
        self._calibration = calibration

    def use_passage_cache(self, max_mb: float | None) -> None:
        """Keep read windows' states (``InvarScorer.use_passage_cache``)."""
        self.scorer.use_passage_cache(max_mb)

    def status(self) -> dict[str, Any]:
        """What a service reports of its reranker: the engine, nodes read in part and the
        passage cache (when there is one)."""
        scorer = self.scorer
        found: dict[str, Any] = {
            "scorer_engine": "hf" if scorer.engine is None else "vllm",
            "scores_calibrated": self.calibration.calibrated,
            "nodes_read_in_part": scorer.window_counts.get("nodes_read_in_part", 0)}
        if scorer.passage_cache is not None:
            cache = scorer.passage_cache
            found["passage_cache"] = {**cache.counts, "passages": len(cache),
                                      "bytes": cache.bytes}
        return found

    def coarse(self, texts: Sequence[str], kind: str = QUERY) -> np.ndarray:
        """``c(x)``: normalised coarse vectors (float32 ``[N, d_c]``) of ``texts`` read as
        ``kind`` (``query`` or ``passage``, each with the encoder's own prompt)."""
        with model_lock(self.coarse_encoder):  # one encoder for all threads
            return encode(self.coarse_encoder, texts, kind)

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
        found = self.coarse(pieces, PASSAGE)
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
            found = self.coarse(texts, PASSAGE)
            vectors.append(found[starts[:-1]])
            cosines += best_window_cosines(query[None], found, starts, [range(len(cands))])
        return vectors, cosines

    def fused(self, queries: Sequence[str], candidates: Sequence[Sequence[Passage | str]],
              query_coarse: np.ndarray, passage_coarse: Sequence[np.ndarray] | None = None,
              cosines: Sequence[np.ndarray] | None = None,
              bm25: Sequence[np.ndarray] | None = None,
              lm: Sequence[np.ndarray] | None = None) -> Part:
        """``s(q, d)`` for each query's candidates, their ``r`` and the tokens the LM read per
        query. The candidates' coarse vectors and cosines are computed when not given (the
        two-stage retriever passes those its index holds, and the BM25 term), and so is the
        scorer's ``r`` (``lm``: already computed, e.g. from a cache; then nothing is read)."""
        if passage_coarse is None or cosines is None:
            passage_coarse, cosines = self.coarse_candidates(query_coarse, candidates)
        tokens = [0] * len(queries)
        if lm is None:
            reading = self.scorer.serve(queries, candidates, query_coarse, passage_coarse)
            lm, tokens = [s.numpy() for s in reading.scores], reading.tokens
        bm25 = bm25 if bm25 is not None else [None] * len(lm)
        return Part([settings_score(self.settings, r, cos, b)
                     for r, cos, b in zip(lm, cosines, bm25)], list(lm), tokens)

    @staticmethod
    def read_in_steps(counts: Sequence[int], read_first: int, stop_margin: float,
                      score: PartScorer) -> Part:
        """Each query's fused scores under the early stop (``early_stop.read_until_clear``),
        with the scorer's ``r`` of what was read and the tokens read per query: the one wiring
        of the policy."""
        tokens = [0] * len(counts)
        lm = [np.full(n, np.nan) for n in counts]

        def counted(picked: list[int], parts: list[slice]) -> list[np.ndarray]:
            found = score(picked, parts)
            for i, part, r, n in zip(picked, parts, found.lm, found.tokens):
                lm[i][part] = r
                tokens[i] += n
            return found.fused

        return Part(read_until_clear(counts, read_first, stop_margin, counted), lm, tokens)

    def features(self, queries: Sequence[str], candidates: Sequence[Sequence[Passage | str]],
                 lm: Sequence[np.ndarray], cosines: Sequence[np.ndarray],
                 prior: np.ndarray | None = None, **terms: Sequence[Any] | None,
                 ) -> tuple[list[dict[str, np.ndarray]], list[int]]:
        """What the calibrators read of every query's candidates (``calibration.pair_features``;
        ``lm``: ``r``, NaN where unread; ``terms``: the two-stage retriever's ``bm25``,
        ``rank`` and ``stage1`` per query), and the tokens read for it per query (the question
        once with no passage; ``prior``: those likelihoods, when already read)."""
        tokens = [0] * len(queries)
        if prior is None:
            prior, tokens = self.scorer.prior(queries)
        return [pair_features(self.settings, lm[i], prior[i], cosines[i],
                              self.scorer.node_lengths(nodes),
                              **{k: v[i] if v is not None else None for k, v in terms.items()})
                for i, nodes in enumerate(candidates)], tokens

    def probabilities(self, path: str, tables: Sequence[dict[str, np.ndarray]],
                      ) -> list[np.ndarray]:
        """P(relevant) of every query's candidates on ``path`` (``reranker`` or ``retriever``),
        each read where its ``lm`` is known; a two-stage retriever without BM25 in stage 1
        uses the reranker's calibrators."""
        return [self.calibration.probabilities(usable_path(path, table), table,
                                               np.isfinite(table["lm"])) for table in tables]

    def rerank(self, query: str, candidates: Sequence[Passage | str],
               top_n: int | None = None, read_first: int | None = None,
               stop_margin: float = STOP_MARGIN) -> list[tuple[int, float]]:
        """``(index into candidates, relevance probability)`` of the best ``top_n`` candidates
        (default: all), best first (:func:`ranking`); an empty candidate list gives an empty
        result.

        ``read_first``: read the first ``read_first`` candidates (in the given order: the
        retriever's), and the rest only while their leader's ``s`` beats the runner-up's by less
        than ``stop_margin`` (``early_stop.py``, the retriever's policy, in fused-score units);
        a candidate left unread gets its probability from the features it has (its cosine and
        length). ``None`` reads every one.
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
        for n in top_n:
            if n is not None:
                check_k(n, "top_n")
        return [found.ranked[:n] for found, n in
                zip(self.rerank_reading(queries, candidates, read_first, stop_margin), top_n)]

    def rerank_reading(self, queries: Sequence[str],
                       candidates: Sequence[Sequence[Passage | str]],
                       read_first: int | None = None,
                       stop_margin: float = STOP_MARGIN) -> list[Reranked]:
        """Every query's candidates ranked, with the tokens read (what a service reports as
        usage); see :meth:`rerank`."""
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries and {len(candidates)} candidate lists")
        for query in queries:
            check_text(query)
        if read_first is not None:
            check_policy(read_first, stop_margin)
        asked = [i for i, cands in enumerate(candidates) if cands]
        found = [Reranked([], [], 0) for _ in queries]
        if not asked:
            return found
        lists = [list(candidates[i]) for i in asked]
        texts = [queries[i] for i in asked]
        query_coarse = self.coarse(texts)  # once for both reading steps and the probabilities
        passage_coarse, cosines = self.coarse_candidates(query_coarse, lists)

        def score(picked: list[int], parts: list[slice]) -> Part:
            return self.fused([texts[i] for i in picked],
                              [lists[i][part] for i, part in zip(picked, parts)],
                              query_coarse[picked],
                              [passage_coarse[i][part] for i, part in zip(picked, parts)],
                              [cosines[i][part] for i, part in zip(picked, parts)])

        counts = [len(c) for c in lists]
        steps = self.read_in_steps(counts, read_first or max(counts), stop_margin, score)
        tables, prior_tokens = self.features(texts, lists, steps.lm, cosines)
        relevance = self.probabilities("reranker", tables)
        for n, i in enumerate(asked):
            fused, probability = steps.fused[n], relevance[n]
            order = ranking(probability, np.isfinite(steps.lm[n]))
            found[i] = Reranked([(int(j), float(probability[j])) for j in order],
                                [float(fused[j]) for j in order],
                                steps.tokens[n] + prior_tokens[n])
        return found
