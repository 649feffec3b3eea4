"""The main job: answer the demo questions with Invar-RAG, sources shown, beside MiniLM + the
base LM answering from the same prompt."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..evaluation.metrics import exact_match
from ..rag import Answer, InvarRAG, RAGPipeline
from ..retrieval import DenseRetriever
from . import SHIPPED_SYSTEM, demo_passages, demo_questions

# questions the demo corpus does not hold (no passage is about them)
NOT_IN_THE_CORPUS = ("Who wrote the novel War and Peace?", "What is the capital of Australia?")


@dataclass(frozen=True)
class DemoSettings:
    """Which trained system to run (default: the small one the project ships) and which
    generation backend (``hf`` or ``vllm``)."""

    system: str | os.PathLike[str] = SHIPPED_SYSTEM
    backend: str = "hf"


def _show(label: str, answer: Answer, gold: tuple[str, ...]) -> float:
    em = exact_match(answer.text, gold)
    print(f"  {label:14s} {answer.text!r}   [{'correct' if em else 'gold: ' + gold[0]}]")
    for source in answer.sources:
        print(f"      source {source.passage.id:8s} {source.score:8.3f}  {source.passage.title}")
    return em


def run_demo(settings: DemoSettings = DemoSettings()) -> dict[str, float]:
    """Print both systems' answers with their sources and timings; return each exact-match rate."""
    system = Path(settings.system)
    print(f"[1/4] loading Invar-RAG from {system} and indexing the demo corpus")
    started = time.perf_counter()
    passages = demo_passages()
    rag = InvarRAG.from_pretrained(system, corpus=passages, backend=settings.backend)
    rag.retriever.show_progress = False
    print(f"      base model, coarse encoder, scorer and generator adapter "
          f"({settings.backend} backend) loaded, {len(passages)} passages indexed in "
          f"{time.perf_counter() - started:.1f} s")

    print("[2/4] baseline: MiniLM top-k + the base LM (no adapter), same prompt")
    minilm = DenseRetriever("minilm", show_progress=False)
    baseline = RAGPipeline(rag.generator, minilm, passages, rag.settings, rag.template)
    baseline.index(passages)

    questions = demo_questions()
    texts = [q.question for q in questions]
    print(f"[3/4] answering {len(questions)} questions with top-{rag.settings.k} passages")
    timings = {}
    answers = {}
    for name, pipeline in (("invar-rag", rag), ("minilm+base", baseline)):
        started = time.perf_counter()
        answers[name] = pipeline.answer_batch(texts)
        timings[name] = time.perf_counter() - started

    print("[4/4] answers")
    scores = {name: 0.0 for name in answers}
    for i, question in enumerate(questions):
        print(f"\nQ: {question.question}")
        for name in answers:
            scores[name] += _show(name, answers[name][i], question.answers)
    print()
    for name, total in scores.items():
        tokens = sum(a.num_tokens for a in answers[name])
        print(f"{name:12s} exact match {total:.0f}/{len(questions)}; {timings[name]:.1f} s "
              f"({timings[name] / len(questions):.2f} s/question, "
              f"{tokens / timings[name]:.1f} tokens/s incl. retrieval)")
    if rag.abstention is not None:
        _show_abstention(rag, texts)
    return {name: total / len(questions) for name, total in scores.items()}


def _show_abstention(rag: InvarRAG, texts: list[str]) -> None:
    """The same questions and two the corpus does not hold, answered with ``abstain=True``."""
    print("\nwith abstain=True: the RAG declines when its confidence is below "
          f"{rag.abstention.threshold:.2f} (the last two questions are not in the corpus)")
    questions = [*texts, *NOT_IN_THE_CORPUS]
    for question, answer in zip(questions, rag.answer_batch(questions, abstain=True)):
        print(f"  {answer.confidence:.2f} {'declined' if answer.declined else 'answered'}  "
              f"{question}  ->  {answer.text!r}")
