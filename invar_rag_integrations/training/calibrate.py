"""Fitting a retriever's relevance calibrators (``invar/calibration.py``) on questions with
known answers: every stage-1 candidate of every question is read, labelled by whether it holds
an answer, and each path's logistic models are fitted with scikit-learn. ``invar-rag calibrate``
stores them in a system; ``benchmarks/calibration.py`` fits the embedded zero-shot ones.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Passage, Question
from ..evaluation.metrics import calibration_errors, has_answer
from ..invar.calibration import (
    PATHS,
    READ_FEATURES,
    Calibration,
    Logistic,
    features_of,
    model_name,
    usable_path,
    without_stage1,
)

MIN_PAIRS_EACH = 20  # relevant and not relevant pairs a fit needs at least


@dataclass
class LabelledPairs:
    """Every stage-1 candidate of some questions, as the calibrators read them.

    Attributes:
        tables: Per question, its candidates' features as the two-stage retriever reads them
            (``lm`` known for every one).
        labels: Per question, which candidates hold an answer.
        datasets: Per question, its dataset.
        settings: The retriever settings the fused scores are of.
    """

    tables: list[dict[str, np.ndarray]]
    labels: list[np.ndarray]
    datasets: list[str]
    settings: Any

    def path_tables(self, path: str) -> list[dict[str, np.ndarray]]:
        """The tables as ``path`` reads them (the reranker: without the stage-1 terms)."""
        if usable_path(path, self.tables[0]) == "retriever":
            return self.tables
        return [without_stage1(t, self.settings) for t in self.tables]

    def stacked(self, path: str, features: Sequence[str], rows: Sequence[int] | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(X [N, F], y [N])`` over questions ``rows`` as ``path`` reads them."""
        rows = range(len(self.tables)) if rows is None else rows
        tables = self.path_tables(path)
        x = np.concatenate([np.column_stack([tables[i][f] for f in features]) for i in rows])
        return x, np.concatenate([self.labels[i] for i in rows]).astype(bool)


def read_candidates(retriever: Any, questions: Sequence[Question], batch_size: int = 16,
                    lm: np.ndarray | None = None,
                    prior: np.ndarray | None = None) -> LabelledPairs:
    """Stage 1's candidates of every question, each read by the LM (``lm``, ``prior``: the
    scorer's ``r`` of every candidate ``[Q, C]`` and of each question without a passage, when
    already read in this order), with its features and label; progress on stderr."""
    tables: list[dict[str, np.ndarray]] = []
    labels: list[np.ndarray] = []
    started = time.perf_counter()
    for start in range(0, len(questions), batch_size):
        part = list(questions[start : start + batch_size])
        texts = [q.question for q in part]
        proposal = retriever.propose(texts)
        nodes = [[retriever.passages[i] for i in r.ids] for r in proposal.results]
        read = list(lm[start : start + len(part)]) if lm is not None else \
            retriever.scorer.score_batch(texts, nodes)
        found, _ = retriever.candidate_features(
            texts, proposal.results, read, proposal.query_coarse, proposal.bm25,
            prior[start : start + len(part)] if prior is not None else None)
        tables += found
        labels += [np.array([has_answer(q.answers, p.full_text()) for p in row])
                   for q, row in zip(part, nodes)]
        if lm is None:
            print(f"calibration: read {start + len(part)}/{len(questions)} questions in "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return LabelledPairs(tables, labels, [q.dataset for q in questions], retriever.settings)


def fit_logistic(x: np.ndarray, y: np.ndarray, features: Sequence[str]) -> Logistic:
    """A logistic model of ``y`` on ``x`` (standardised while fitting, stored in raw units).

    Raises:
        ValueError: Fewer than :data:`MIN_PAIRS_EACH` relevant or not relevant pairs.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    positives = int(y.sum())
    if min(positives, len(y) - positives) < MIN_PAIRS_EACH:
        raise ValueError(f"calibrating needs at least {MIN_PAIRS_EACH} candidates that hold an "
                         f"answer and {MIN_PAIRS_EACH} that do not; these questions gave "
                         f"{positives} of {len(y)}: use more questions")
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(max_iter=1000).fit(scaler.transform(x), y)
    weights = model.coef_[0] / scaler.scale_
    intercept = float(model.intercept_[0] - (weights * scaler.mean_).sum())
    return Logistic(tuple(features), tuple(float(w) for w in weights), intercept)


def fit_models(pairs: LabelledPairs, rows: Sequence[int] | None = None,
               read_features: Sequence[str] = READ_FEATURES) -> dict[str, Logistic]:
    """Every path's models (read, unread) fitted on questions ``rows`` (default: all); a path
    whose tables lack some of the features (the reranker has no stage-1 terms, nor a two-stage
    retriever without BM25 in stage 1) takes the reranker's."""
    if not pairs.tables:
        raise ValueError("no questions to calibrate on: give a question file (and split, "
                         "datasets) that holds some")
    models: dict[str, Logistic] = {}
    for path in PATHS:
        tables = pairs.path_tables(path)
        for read in (True, False):
            features = tuple(read_features) if read else features_of(path, False)
            if not set(features) <= set(tables[0]):
                features = features_of("reranker", read)
            x, y = pairs.stacked(path, features, rows)
            models[model_name(path, read)] = fit_logistic(x, y, features)
    return models


def fit_calibration(pairs: LabelledPairs, source: str,
                    read_features: Sequence[str] = READ_FEATURES) -> Calibration:
    """The calibration fitted on every pair, recording what it was fitted on
    (``read_features``: another read model, to compare)."""
    y = np.concatenate(pairs.labels)
    return Calibration(fit_models(pairs, read_features=read_features), {
        "source": source, "questions": len(pairs.tables), "pairs": int(len(y)),
        "relevant_share": round(float(y.mean()), 4),
        "datasets": sorted(set(pairs.datasets))})


def cross_fitted(pairs: LabelledPairs, folds: int = 5) -> dict[str, dict[str, float]]:
    """Per path, the calibration errors of the read model on questions it was not fitted on
    (``folds`` folds by question): what a calibration fitted on these questions is worth."""
    from sklearn.model_selection import KFold

    found: dict[str, list[np.ndarray]] = {path: [] for path in PATHS}
    outcomes = []
    for fit_rows, test_rows in KFold(min(folds, len(pairs.tables)), shuffle=True,
                                     random_state=0).split(pairs.tables):
        models = fit_models(pairs, fit_rows)
        for path in PATHS:
            model = models[model_name(path, True)]
            x, y = pairs.stacked(path, model.features, test_rows)
            found[path].append(model.probability(dict(zip(model.features, x.T))))
        outcomes.append(y)
    y = np.concatenate(outcomes)
    return {path: calibration_errors(np.concatenate(p), y) for path, p in found.items()}


def calibrate_system(system_dir: str | os.PathLike[str], questions: Sequence[Question],
                     corpus: Sequence[Passage], source: str) -> dict[str, Any]:
    """Fit the calibration of system ``system_dir`` on ``questions`` over ``corpus`` (indexed
    here, the system's own index left as it is) and store it in the manifest.

    Returns:
        What was fitted on and the cross-fitted errors before storing (``cross_fitted``).
    """
    from ..invar.artifacts import store_calibration
    from ..invar.two_stage import TwoStageRetriever

    retriever = TwoStageRetriever.from_pretrained(system_dir, index=None, show_progress=True)
    retriever.index(list(corpus))
    pairs = read_candidates(retriever, questions)
    calibration = fit_calibration(pairs, source)
    report = {"fitted_on": dict(calibration.fitted_on), "cross_fitted": cross_fitted(pairs)}
    store_calibration(Path(system_dir), calibration, report)
    return report


def calibrate_on_tuning(retriever: Any, tune: list) -> dict[str, Any]:
    """Fit the trained retriever's calibration on the tuning questions (stored with it); too
    few of them leave it uncalibrated, said here and when it loads."""
    try:
        pairs = read_candidates(retriever, tune)
        retriever.reranker.calibration = fit_calibration(
            pairs, f"train-retriever: {len(tune)} tuning questions")
    except ValueError as err:
        print(f"the retriever is saved uncalibrated: {err}", file=sys.stderr)
        return {"fitted": False, "reason": str(err)}
    return {"fitted": True, **retriever.reranker.calibration.fitted_on}
