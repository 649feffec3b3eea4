"""Candidate sets for retriever training and the context-resizing view of a passage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from invar_rag_integrations.data import Passage, Question
from invar_rag_integrations.evaluation.metrics import answer_window, has_answer


@dataclass(frozen=True)
class Candidates:
    """A query's candidate passages (gold first, then hard negatives) and which are positive."""

    ids: list[str]
    positives: list[bool]


def mine_candidates(question: Question, ranked: Sequence[Sequence[str]],
                    passages: Mapping[str, Passage], num_candidates: int,
                    answer_positives: bool = True,
                    drop_answer_negatives: bool = True) -> Candidates:
    """Gold passages plus hard negatives taken in turn from each ranked list (MiniLM, BM25, ...).

    Args:
        question: The question (its ``gold_passage_ids`` are the positives when present).
        ranked: Passage ids ranked by each mining retriever, best first.
        passages: The corpus by id.
        num_candidates: Size of the candidate set.
        answer_positives: For questions without gold passages, count mined passages that
            contain an answer as positives (DPR-style distant supervision).
        drop_answer_negatives: For questions with gold passages, skip mined passages that
            contain an answer (likely false negatives).

    Returns:
        The candidates; ``ids`` is empty when nothing could be mined.
    """
    gold = [pid for pid in question.gold_passage_ids if pid in passages][:num_candidates]
    chosen, seen = list(gold), set(gold)
    depth = max((len(r) for r in ranked), default=0)
    for rank in range(depth):
        for ranking in ranked:
            if len(chosen) >= num_candidates:
                break
            if rank >= len(ranking) or ranking[rank] in seen:
                continue
            pid = ranking[rank]
            seen.add(pid)
            if gold and drop_answer_negatives and has_answer(question.answers,
                                                             passages[pid].full_text()):
                continue
            chosen.append(pid)
    if gold:
        positives = [pid in gold for pid in chosen]
    else:
        positives = [answer_positives and has_answer(question.answers, passages[pid].full_text())
                     for pid in chosen]
    return Candidates(chosen, positives)


def resize_context(passage: Passage, answers: Sequence[str], words: int) -> str:
    """The passage as the LM sees it in one context-resizing variant: its
    :func:`answer_window` of ``words`` words under the passage title."""
    body = answer_window(passage.text, answers, words)
    return f"{passage.title}\n{body}" if passage.title else body
