"""Fitting a system's abstention model on tuning questions: answerable and unanswerable
examples (``evaluation/abstention_eval.py``), a logistic model of the chosen signals, and the
threshold that keeps a set share of the correct answers. ``invar-rag fit-abstention`` stores
it in the system.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data import Passage, Question
from ..evaluation.abstention_eval import AbstentionExample, abstention_set, auroc
from ..generation.abstention import SIGNALS, AbstentionModel, store_abstention
from ..system import read_manifest
from .calibrate import MIN_PAIRS_EACH, fit_logistic

DEFAULT_SIGNALS = SIGNALS  # the best on the tuning questions (BENCHMARKS.md, abstention)
KEEP_CORRECT = 0.95  # share of the tuning questions' correct answers the threshold keeps (a
# margin: 0.90 is the aim on unseen questions)
MIN_CORRECT = 10


def signal_table(examples: Sequence[AbstentionExample],
                 signals: Sequence[str]) -> dict[str, np.ndarray]:
    """Each signal over the examples (name -> ``[N]``)."""
    return {s: np.array([getattr(e.evidence, s) for e in examples], dtype=np.float64)
            for s in signals}


def keeping_threshold(confidences: np.ndarray, keep: float) -> float:
    """The highest threshold at which at least ``keep`` of ``confidences`` stay at or above."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep_correct must be in (0, 1], got {keep}")
    ordered = np.sort(np.asarray(confidences, dtype=np.float64))[::-1]
    return float(ordered[math.ceil(keep * len(ordered)) - 1])


def fit_abstention(examples: Sequence[AbstentionExample],
                   signals: Sequence[str] = DEFAULT_SIGNALS,
                   keep_correct: float = KEEP_CORRECT, source: str = "") -> AbstentionModel:
    """A logistic model of answerable against unanswerable examples, with the threshold that
    keeps ``keep_correct`` of the correct answers to answerable questions.

    Raises:
        ValueError: Fewer than 20 answerable or unanswerable examples, or fewer than 10
            correct answers.
    """
    answerable = np.array([e.answerable for e in examples], dtype=bool)
    correct = answerable & np.array([e.correct for e in examples], dtype=bool)
    if min(answerable.sum(), (~answerable).sum()) < MIN_PAIRS_EACH \
            or correct.sum() < MIN_CORRECT:
        raise ValueError(f"fitting abstention needs at least {MIN_PAIRS_EACH} answerable and "
                         f"{MIN_PAIRS_EACH} unanswerable questions and {MIN_CORRECT} correct "
                         f"answers; these gave {answerable.sum()}, {(~answerable).sum()} and "
                         f"{correct.sum()}: use more questions")
    table = signal_table(examples, signals)
    model = fit_logistic(np.column_stack([table[s] for s in signals]), answerable, signals)
    confidence = model.probability(table)
    threshold = keeping_threshold(confidence[correct], keep_correct)
    declined = float((confidence[~answerable] < threshold).mean())
    fitted_on = {"source": source, "answerable": int(answerable.sum()),
                 "unanswerable": int((~answerable).sum()), "correct": int(correct.sum()),
                 "datasets": dict(Counter(e.dataset for e in examples)),
                 "keep_correct": keep_correct, "auroc_unanswerable": auroc(confidence,
                                                                            answerable),
                 "declined_unanswerable": declined}
    return AbstentionModel(model, threshold, fitted_on)


def fit_abstention_system(system_dir: str | os.PathLike[str], questions: Sequence[Question],
                          corpus: Sequence[Passage], cache_dir: str | os.PathLike[str],
                          source: str, signals: Sequence[str] = DEFAULT_SIGNALS,
                          keep_correct: float = KEEP_CORRECT,
                          on_by_default: bool = False) -> dict[str, Any]:
    """Fit system ``system_dir``'s abstention model on ``questions`` (answered over ``corpus``
    and over ``corpus`` without their answers) and store it in the manifest.

    Returns:
        What it was fitted on, with its figures on those questions.
    """
    from ..rag import InvarRAG

    if not 0.0 < keep_correct <= 1.0:  # said before the long answering, not after
        raise ValueError(f"keep_correct must be in (0, 1], got {keep_correct}")
    rag = InvarRAG.from_pretrained(system_dir, abstain=False)
    rag.index(list(corpus))  # these passages, not a saved index of other ones
    generator = read_manifest(system_dir)["generator"]["hash"]
    examples = abstention_set(rag, questions, corpus, cache_dir, generator).examples
    model = fit_abstention(examples, signals, keep_correct, source)
    store_abstention(system_dir, model, on_by_default)
    return {**model.fitted_on, "threshold": model.threshold,
            "signals": list(model.model.features)}
