"""Answer evaluation: EM / F1 per dataset and generation speed for any :class:`RAGPipeline`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..data import Question
from .metrics import exact_match, f1_score

if TYPE_CHECKING:
    from ..rag import Answer, RAGPipeline, Source

QA_DATASETS = ("nq", "popqa_longtail", "triviaqa_dev")


def sample_per_dataset(questions: Sequence[Question], size: int | None,
                       seed: int = 0) -> list[Question]:
    """At most ``size`` questions of each dataset, a fixed seeded choice (``None``: all).

    The choice depends on question ids and ``seed`` only, never on file order.
    """
    if size is None:
        return list(questions)
    if size <= 0:
        raise ValueError(f"sample size must be positive, got {size}")

    def key(q: Question) -> bytes:
        return hashlib.sha256(f"{seed}|{q.id}".encode()).digest()

    chosen: set[str] = set()
    for dataset in dict.fromkeys(q.dataset for q in questions):
        pool = sorted((q for q in questions if q.dataset == dataset), key=key)
        chosen.update(q.id for q in pool[:size])
    return [q for q in questions if q.id in chosen]


def answer_rows(system: str, split: str, questions: Sequence[Question],
                answers: Sequence[Answer]) -> list[dict]:
    """Mean EM and F1 per dataset as long-form result rows."""
    rows = []
    for dataset in dict.fromkeys(q.dataset for q in questions):
        pairs = [(q, a) for q, a in zip(questions, answers) if q.dataset == dataset]
        for metric, score in (("em", exact_match), ("f1", f1_score)):
            value = sum(score(a.text, q.answers) for q, a in pairs) / len(pairs)
            rows.append({"system": system, "split": split, "dataset": dataset,
                         "metric": metric, "value": value, "n": len(pairs)})
    return rows


def evaluate_answers(pipeline: RAGPipeline, questions: Sequence[Question], system: str,
                     split: str, sources: Sequence[Sequence[Source]] | None = None,
                     show_progress: bool = True) -> tuple[list[dict], list[Answer]]:
    """Answer ``questions`` (batched; ``sources`` replaces retrieval) and score them.

    Returns:
        Rows of EM / F1 per dataset plus ``tokens_per_s`` and ``s_per_question`` of the
        generation (dataset ``all``), and the answers.
    """
    started = time.perf_counter()
    answers = pipeline.answer_batch([q.question for q in questions], sources=sources,
                                    show_progress=show_progress)
    seconds = time.perf_counter() - started
    tokens = sum(a.num_tokens for a in answers)
    speed = [("tokens_per_s", tokens / seconds), ("s_per_question", seconds / len(questions))]
    rows = answer_rows(system, split, questions, answers) + [
        {"system": system, "split": split, "dataset": "all", "metric": metric, "value": value,
         "n": len(questions)} for metric, value in speed]
    return rows, answers


QA_SYSTEMS = ("closed-book", "base+minilm", "base+invar", "generator+minilm", "invar-rag")
ADAPTER_SYSTEMS = ("generator+minilm", "invar-rag")  # the rest answer with the base model


def compare_systems(system_dir: str, questions: Sequence[Question], passages: Sequence,
                    split: str, systems: Sequence[str] = QA_SYSTEMS, batch_size: int = 8,
                    show_progress: bool = True, backend: str = "hf") -> list[dict]:
    """EM / F1 and speed of the base LM closed-book, the base LM over MiniLM's and over the
    Invar retriever's top-k, the generator adapter over MiniLM's top-k (does the retriever
    matter for the answers?) and the full system (generator adapter over Invar), in one run.

    Every system shares the trained system's base model (one copy), prompt template, ``k`` and
    token budgets; retrievals are cached under the cache folder. ``backend`` is ``hf`` or
    ``vllm`` (one engine serves the base model and the adapter to every system).
    """
    from ..generation.artifacts import GENERATOR_ADAPTER
    from ..paths import cache_dir
    from ..rag import InvarRAG, RAGPipeline
    from ..retrieval import DenseRetriever
    from ..retrieval.search_cache import cached_search

    unknown = sorted(set(systems) - set(QA_SYSTEMS))
    if unknown:
        raise ValueError(f"unknown systems {unknown}; known: {', '.join(QA_SYSTEMS)}")
    base_rows = [n for n in systems if n not in ADAPTER_SYSTEMS]
    if backend == "vllm-merged" and base_rows:
        raise ValueError(f"the vllm-merged backend serves the generator alone; {base_rows} need "
                         "the base model: use --backend vllm or --systems invar-rag "
                         "generator+minilm")
    rag = InvarRAG.from_pretrained(system_dir, corpus=passages, batch_size=batch_size,
                                   backend=backend)
    texts = [q.question for q in questions]
    rows: list[dict] = []
    minilm = None
    for name in systems:
        retriever = rag.retriever if "invar" in name else None
        if "minilm" in name:
            if minilm is None:
                minilm = DenseRetriever("minilm", show_progress=show_progress)
                minilm.index(list(passages))
            retriever = minilm
        adapter = GENERATOR_ADAPTER if name in ADAPTER_SYSTEMS else None
        pipeline = RAGPipeline(rag.generator, retriever, passages, rag.settings, rag.template,
                               adapter, batch_size)
        sources = None
        if retriever is not None:
            sources = pipeline.sources(cached_search(retriever, texts, rag.settings.k,
                                                     cache_dir() / "search",
                                                     show_progress=show_progress))
        if show_progress:
            print(f"answering {len(questions)} questions with {name}", flush=True)
        rows += evaluate_answers(pipeline, questions, name, split, sources, show_progress)[0]
    return rows
