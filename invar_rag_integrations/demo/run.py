"""The main job: retrieve from the demo corpus and answer each demo question, with sources."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..evaluation.metrics import exact_match
from ..generation import HFGenerator, PromptTemplate
from ..models import DEFAULT_BASE_MODEL, DEFAULT_COARSE_ENCODER, load_base_lm
from ..retrieval import DenseRetriever
from . import demo_passages, demo_questions


@dataclass(frozen=True)
class DemoSettings:
    """Which models to use and how many passages to show the generator."""

    base_model: str = DEFAULT_BASE_MODEL
    coarse_encoder: str = DEFAULT_COARSE_ENCODER
    k: int = 3
    n_shots: int = 3
    max_new_tokens: int = 24


def run_demo(settings: DemoSettings = DemoSettings()) -> float:
    """Print each answer with its source passages and timings; return the exact-match rate."""
    print(f"[1/4] loading coarse encoder {settings.coarse_encoder!r} and indexing the demo corpus")
    started = time.perf_counter()
    passages = demo_passages()
    by_id = {p.id: p for p in passages}
    retriever = DenseRetriever(settings.coarse_encoder, show_progress=False)
    retriever.index(passages)
    print(f"      {len(passages)} passages indexed in {time.perf_counter() - started:.1f} s")

    print(f"[2/4] loading base LM {settings.base_model!r} (converted once, then cached)")
    started = time.perf_counter()
    model, tokenizer = load_base_lm(settings.base_model)
    generator = HFGenerator(model, tokenizer)
    print(f"      loaded in {time.perf_counter() - started:.1f} s")

    questions = demo_questions()
    print(f"[3/4] retrieving top-{settings.k} for {len(questions)} questions")
    started = time.perf_counter()
    results = retriever.search([q.question for q in questions], settings.k)
    retrieve_s = time.perf_counter() - started

    print("[4/4] answering")
    template = PromptTemplate(n_shots=settings.n_shots)
    prompts = [template.render(q.question, [by_id[i] for i in r.ids])
               for q, r in zip(questions, results)]
    started = time.perf_counter()
    generations = generator.generate(prompts, max_new_tokens=settings.max_new_tokens)
    generate_s = time.perf_counter() - started

    correct = 0.0
    for question, result, generation in zip(questions, results, generations):
        answer = template.clean_answer(generation.text)
        em = exact_match(answer, question.answers)
        correct += em
        verdict = "correct" if em else f"gold: {question.answers[0]}"
        print(f"\nQ: {question.question}\nA: {answer}   [{verdict}]")
        for pid, score in zip(result.ids, result.scores):
            print(f"   source {pid:8s} {score:.3f}  {by_id[pid].title}")
    tokens = sum(g.num_tokens for g in generations)
    print(f"\nexact match {correct:.0f}/{len(questions)}; retrieval {retrieve_s * 1000:.0f} ms for "
          f"all questions; generation {generate_s:.1f} s ({tokens / generate_s:.1f} tokens/s, "
          f"{generate_s / len(questions):.2f} s/question)")
    return correct / len(questions)
