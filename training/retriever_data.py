"""Retriever training data: questions, query/context variants, candidates and LSR scores.

An example holds, for one question, ``V`` variants (variant 0 is the original query with the
default context size; then query rewrites; then context resizings of the original query),
``C`` candidate passages with their positive flags, and ``log P_LM(answer | passage, query)``
for every variant x candidate (``[V][C]``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from invar_rag_integrations.data import Passage, Question
from invar_rag_integrations.evaluation.datasets import ODQA_DATASETS, freebaseqa, odqa_questions

from .candidates import Candidates, resize_context
from .lsr import LSRScorer, lsr_prompt
from .query_variants import rewrite

TRAIN_SOURCES = (*ODQA_DATASETS, "freebaseqa")


@dataclass(frozen=True)
class Variant:
    """One view of a question: the query text and the context size the LM sees."""

    kind: str
    query: str
    context_words: int


def _shuffled(items: list[Question], seed: int, salt: str) -> list[Question]:
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}|{salt}".encode()).digest()[:8],
                                       "big"))
    items = list(items)
    rng.shuffle(items)
    return items


def select_questions(sources: Sequence[str], counts: Sequence[int], tune_count: int, seed: int,
                     data_dir: str | None = None) -> tuple[list[Question], list[Question]]:
    """``(training, tuning)`` questions; both from the ``train`` split (never validation).

    ODQA datasets give ``counts[i]`` training questions and ``tune_count`` disjoint tuning
    questions (for choosing the fusion weight); FreebaseQA gives training questions only.
    """
    if len(sources) != len(counts):
        raise ValueError(f"train_datasets ({len(sources)}) and questions_per_dataset "
                         f"({len(counts)}) must have the same length")
    unknown = sorted(set(sources) - set(TRAIN_SOURCES))
    if unknown:
        raise ValueError(f"unknown training datasets {unknown}; known: {', '.join(TRAIN_SOURCES)}")
    train, tune = [], []
    for source, count in zip(sources, counts):
        if source == "freebaseqa":
            train.extend(_shuffled(freebaseqa(data=data_dir), seed, source)[:count])
            continue
        pool = _shuffled(odqa_questions("train", [source], data=data_dir), seed, source)
        train.extend(pool[:count])
        tune.extend(pool[count : count + tune_count])
    return train, tune


def make_variants(question: str, rewrite_kinds: Sequence[str], num_rewrites: int,
                  context_words: Sequence[int], seed: int,
                  paraphrases: Sequence[str] = ()) -> list[Variant]:
    """Variant 0 (original query, ``context_words[0]``), rewrites, paraphrases, resizings."""
    if not context_words:
        raise ValueError("context_words needs at least one size")
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}|{question}".encode())
                                       .digest()[:8], "big"))
    kinds = rng.sample(list(rewrite_kinds), min(num_rewrites, len(rewrite_kinds)))
    size = context_words[0]
    return ([Variant("original", question, size)]
            + [Variant(kind, rewrite(question, kind, seed), size) for kind in kinds]
            + [Variant("paraphrase", text, size) for text in paraphrases]
            + [Variant(f"context{words}", question, words) for words in context_words[1:]])


def lm_paraphrases(questions: Sequence[str], generator: Any, count: int) -> list[list[str]]:
    """``count`` sampled paraphrases per question from the base LM (empty ones dropped)."""
    prompts = [f"Rewrite the question with different words, keeping its meaning.\n"
               f"Question: {q}\nRewritten question:" for q in questions for _ in range(count)]
    outputs = generator.generate(prompts, max_new_tokens=32, stop=["\n"], do_sample=True,
                                 temperature=0.8, top_p=0.95, show_progress=True)
    texts = [o.text.strip() for o in outputs]
    return [[t for t in texts[i * count : (i + 1) * count] if t] for i in range(len(questions))]


def build_examples(questions: Sequence[Question], candidates: Sequence[Candidates],
                   variants: Sequence[Sequence[Variant]], passages: Mapping[str, Passage],
                   scorer: LSRScorer) -> list[dict[str, Any]]:
    """Score every variant x candidate with the LM and assemble the training examples.

    Questions whose candidate set is empty are left out (the caller reports how many).
    """
    pairs, spans = [], []
    for question, cands, views in zip(questions, candidates, variants):
        start = len(pairs)
        for view in views:
            for pid in cands.ids:
                context = resize_context(passages[pid], question.answers, view.context_words)
                pairs.append((lsr_prompt(context, view.query), question.answers[0]))
        spans.append((start, len(pairs)))
    scores = scorer.score(pairs)
    examples = []
    for question, cands, views, (start, stop) in zip(questions, candidates, variants, spans):
        if not cands.ids:
            continue
        grid = scores[start:stop].reshape(len(views), len(cands.ids))
        examples.append({"id": question.id, "dataset": question.dataset,
                         "variants": [v.query for v in views],
                         "variant_kinds": [v.kind for v in views],
                         "candidate_ids": list(cands.ids), "positives": list(cands.positives),
                         "lm_logprobs": grid.tolist()})
    return examples


class RetrieverDataset(torch.utils.data.Dataset):
    """Examples with their coarse vectors attached, as the training model consumes them.

    Args:
        examples: From :func:`build_examples`.
        query_coarse: Coarse vector of every variant text.
        passage_coarse: Coarse vector of every candidate passage id.
        passages: The corpus by id (texts are passed on for ``doc_input`` with text).
    """

    def __init__(self, examples: list[dict[str, Any]], query_coarse: Mapping[str, np.ndarray],
                 passage_coarse: Mapping[str, np.ndarray], passages: Mapping[str, Passage]):
        self.examples, self.query_coarse = examples, query_coarse
        self.passage_coarse, self.passages = passage_coarse, passages

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        return {
            "variants": ex["variants"],
            "variant_coarse": np.stack([self.query_coarse[v] for v in ex["variants"]]),
            "candidate_ids": ex["candidate_ids"],
            "candidate_texts": [self.passages[p].full_text() for p in ex["candidate_ids"]],
            "candidate_coarse": np.stack([self.passage_coarse[p] for p in ex["candidate_ids"]]),
            "positives": ex["positives"],
            "lm_logprobs": np.asarray(ex["lm_logprobs"], dtype=np.float32),
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad candidates to the batch's largest set; variants must agree in number."""
    variants = {len(it["variants"]) for it in items}
    if len(variants) != 1:
        raise ValueError(f"examples in a batch have different variant counts {sorted(variants)}")
    width = max(len(it["candidate_ids"]) for it in items)
    batch, dim = len(items), items[0]["candidate_coarse"].shape[1]
    count = variants.pop()
    mask = torch.zeros(batch, width, dtype=torch.bool)
    positives = torch.zeros(batch, width, dtype=torch.bool)
    lm = torch.zeros(batch, count, width)
    coarse = torch.zeros(batch, width, dim)
    for i, it in enumerate(items):
        c = len(it["candidate_ids"])
        mask[i, :c] = True
        positives[i, :c] = torch.tensor(it["positives"])
        lm[i, :, :c] = torch.from_numpy(it["lm_logprobs"])
        coarse[i, :c] = torch.from_numpy(it["candidate_coarse"])
    return {
        "variants": [it["variants"] for it in items],
        "variant_coarse": torch.from_numpy(np.stack([it["variant_coarse"] for it in items])),
        "candidate_ids": [it["candidate_ids"] for it in items],
        "candidate_texts": [it["candidate_texts"] for it in items],
        "candidate_coarse": coarse, "mask": mask, "positives": positives, "lm_logprobs": lm,
    }
