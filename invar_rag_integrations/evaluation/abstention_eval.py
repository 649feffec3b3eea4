"""Abstention examples: each kept question answered over the full corpus when its answer is in
the top ``k`` the generator reads (answerable), and over the corpus without its answers
(unanswerable), with the evidence of each answer; and the figures that judge a signal."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data import Passage, Question
from ..generation.abstention import Evidence
from ..retrieval.search_cache import cached_search
from .metrics import exact_match, has_answer
from .unanswerable import AnswerIndex, UnanswerableSet, unanswerable_set

if TYPE_CHECKING:
    from ..rag import RAGPipeline


@dataclass(frozen=True)
class AbstentionExample:
    """One answer of the RAG on an answerable or unanswerable question.

    Attributes:
        question_id, dataset: Which question.
        answerable: Over the full corpus with an answer in the top ``k`` (else over the corpus
            without its answers).
        answer: What the generator answered.
        correct: Exact match with a gold answer.
        evidence: The signals of the answer.
    """

    question_id: str
    dataset: str
    answerable: bool
    answer: str
    correct: bool
    evidence: Evidence


@dataclass(frozen=True)
class AbstentionSet:
    """The examples of one question set and what was excluded on the way, per dataset."""

    examples: list[AbstentionExample]
    excluded: dict[str, dict[str, int]]
    kept: dict[str, int]


def _cache_file(rag: RAGPipeline, folder: Path, generator_identity: str) -> Path:
    parts = [rag.retriever.identity() if rag.retriever else "none", str(rag.adapter),
             generator_identity,
             json.dumps(asdict(rag.template), sort_keys=True), repr(rag.settings),
             str(getattr(rag.generator, "name", ""))]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return folder / f"examples-{key}.jsonl"


def _read(file: Path) -> dict[str, AbstentionExample]:
    known = {}
    if file.is_file():
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                record["evidence"] = Evidence(**record["evidence"])
                example = AbstentionExample(**record)
            except (json.JSONDecodeError, TypeError, KeyError):
                continue  # a line cut by a kill
            known[f"{example.question_id}|{example.answerable}"] = example
    return known


def abstention_set(rag: RAGPipeline, questions: Sequence[Question], passages: Sequence[Passage],
                   cache_dir: str | os.PathLike[str], generator_identity: str,
                   index: AnswerIndex | None = None, chunk: int = 32,
                   show_progress: bool = True) -> AbstentionSet:
    """Answer the kept questions of each dataset over the full corpus (``rag`` is indexed over
    ``passages``) and over the corpus without their answers (indexed anew), with evidence.

    Answers are cached (appended every ``chunk`` examples) under ``cache_dir``, keyed by the
    retriever, ``generator_identity`` (e.g. the manifest's generator hash), adapter, prompt and
    settings, so an interrupted run resumes.
    """
    if rag.retriever is None:
        raise ValueError("abstention is measured for a pipeline with a retriever")
    index = index or AnswerIndex(passages)
    folder = Path(cache_dir)
    file = _cache_file(rag, folder, generator_identity)
    known = _read(file)
    k = rag.settings.k
    sets: dict[str, UnanswerableSet] = {}
    todo: list[tuple[Question, bool, list]] = []
    for dataset in dict.fromkeys(q.dataset for q in questions):
        chosen = unanswerable_set([q for q in questions if q.dataset == dataset], passages,
                                  index=index)
        sets[dataset] = chosen
        texts = [q.question for q in chosen.questions]
        full = rag.sources(cached_search(rag.retriever, texts, k, folder / "search",
                                         show_progress=show_progress))
        reduced_retriever = rag.retriever.unindexed()
        reduced_retriever.index(chosen.corpus)
        reduced = rag.sources(cached_search(reduced_retriever, texts, k, folder / "search",
                                            show_progress=show_progress))
        for question, top, without in zip(chosen.questions, full, reduced):
            shown = "\n".join(rag.template.format_passage(i, s.passage)
                              for i, s in enumerate(top, start=1))
            if has_answer(question.answers, shown):
                todo.append((question, True, top))
            todo.append((question, False, without))
    missing = [t for t in todo if f"{t[0].id}|{t[1]}" not in known]
    file.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(missing), chunk):
        batch = missing[start : start + chunk]
        if show_progress:
            print(f"abstention examples: answering {start + 1}-{start + len(batch)} of "
                  f"{len(missing)}", flush=True)
        answers = rag.answer_batch([q.question for q, _, _ in batch],
                                   sources=[s for _, _, s in batch], abstain=False,
                                   evidence=True)
        fresh = [AbstentionExample(q.id, q.dataset, answerable, a.text,
                                   bool(exact_match(a.text, q.answers)), a.evidence)
                 for (q, answerable, _), a in zip(batch, answers)]
        with file.open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(asdict(e)) + "\n" for e in fresh)
        known.update({f"{e.question_id}|{e.answerable}": e for e in fresh})
    return AbstentionSet([known[f"{q.id}|{answerable}"] for q, answerable, _ in todo],
                         {d: s.excluded for d, s in sets.items()},
                         {d: len(s.questions) for d, s in sets.items()})


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """The probability that a random positive scores above a random negative (ties: half)."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, np.asarray(scores, dtype=float)))


def at_threshold(confidence: Sequence[float], examples: Sequence[AbstentionExample],
                 threshold: float) -> dict[str, float]:
    """What a threshold does: the share of unanswerable questions declined, the share of the
    correct answers to answerable questions kept, the share answered and their EM."""
    confidence = np.asarray(confidence, dtype=np.float64)
    answered = confidence >= threshold
    answerable = np.array([e.answerable for e in examples], dtype=bool)
    correct = np.array([e.correct for e in examples], dtype=bool)
    right = answerable & correct
    return {"declined_unanswerable": float((~answered[~answerable]).mean()),
            "correct_kept": float(answered[right].mean()) if right.any() else float("nan"),
            "answered": float(answered.mean()),
            "em_answered": float(correct[answered].mean()) if answered.any() else float("nan")}


def coverage_curve(confidence: Sequence[float], correct: Sequence[bool],
                   steps: int = 10) -> list[tuple[float, float]]:
    """``(share answered, EM of those answered)`` when the RAG answers only its most confident
    ``1/steps, 2/steps, ..., 1`` share of the questions."""
    order = np.argsort(-np.asarray(confidence, dtype=np.float64), kind="stable")
    hits = np.asarray(correct, dtype=np.float64)[order]
    points = []
    for step in range(1, steps + 1):
        count = max(1, round(step / steps * len(hits)))
        points.append((count / len(hits), float(hits[:count].mean())))
    return points
