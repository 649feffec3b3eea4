"""Acc@k evaluation of any :class:`~invar_rag_integrations.retrieval.Retriever`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from tqdm.auto import tqdm

from ..data import Passage, Question
from ..retrieval.base import Retriever, SearchResult
from .metrics import first_hit_rank

DEFAULT_KS = (1, 5, 20)


def search_all(retriever: Retriever, queries: Sequence[str], k: int, batch_size: int = 64,
               desc: str = "search") -> list[SearchResult]:
    """Search ``queries`` in batches with a progress bar."""
    results: list[SearchResult] = []
    for start in tqdm(range(0, len(queries), batch_size), desc=desc, unit="batch",
                      disable=len(queries) <= batch_size):
        results.extend(retriever.search(queries[start : start + batch_size], k))
    return results


def hit_ranks(questions: Sequence[Question], results: Sequence[SearchResult],
              passages: Mapping[str, Passage]) -> list[int | None]:
    """Rank of the first answer-bearing passage for each question (``None`` if none)."""
    return [first_hit_rank(q.answers, [passages[pid].full_text() for pid in r.ids])
            for q, r in zip(questions, results)]


def accuracy_rows(system: str, split: str, questions: Sequence[Question],
                  ranks: Sequence[int | None], ks: Sequence[int] = DEFAULT_KS,
                  suffix: str = "") -> list[dict]:
    """Long-form result rows ``acc@k`` per dataset from first-hit ranks."""
    grouped: dict[str, list[int | None]] = defaultdict(list)
    for question, rank in zip(questions, ranks):
        grouped[question.dataset].append(rank)
    rows = []
    for dataset, dataset_ranks in grouped.items():
        for k in ks:
            hits = sum(1 for r in dataset_ranks if r is not None and r < k)
            rows.append({"system": system, "split": split, "dataset": dataset,
                         "metric": f"acc@{k}{suffix}", "value": hits / len(dataset_ranks),
                         "n": len(dataset_ranks)})
    return rows


def evaluate_retrieval(retriever: Retriever, questions: Sequence[Question],
                       passages: Mapping[str, Passage], split: str,
                       ks: Sequence[int] = DEFAULT_KS, system: str | None = None) -> list[dict]:
    """Acc@k rows per dataset for ``retriever`` (already indexed) on ``questions``."""
    if not questions:
        raise ValueError("no questions to evaluate")
    results = search_all(retriever, [q.question for q in questions], max(ks))
    return accuracy_rows(system or retriever.name, split, questions,
                         hit_ranks(questions, results, passages), ks)
