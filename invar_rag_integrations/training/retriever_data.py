"""Scorer training data: questions, candidate sets, query / context variants and LSR scores.

An example holds, for one question, ``V`` variants (variant 0 is the original query reading the
passages as served; then query rewrites and paraphrases; then context resizings of the original
query), ``C`` stage-1 candidates (gold passages added where known) with their positive flags,
and, for every variant x candidate (``[V][C]``), ``log P_LM(answer | passage view, query)``,
the coarse cosine and the BM25 feature (both added by the driver; BM25 zeros without BM25 in
stage 1).
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
from invar_rag_integrations.evaluation.datasets import freebaseqa, odqa_questions
from invar_rag_integrations.evaluation.metrics import answer_window, has_answer

from .candidates import resize_context
from .lsr import LSRScorer, lsr_prompt
from .query_variants import rewrite

# The LM answers from a node's window of this many words around the answer (its beginning when
# it holds none): about one scorer window, the one the scorer's best window reads.
LSR_SERVED_WORDS = 100


@dataclass(frozen=True)
class Variant:
    """One view of a question: the query text and the passage words shown (0 = the passage as
    served)."""

    kind: str
    query: str
    context_words: int = 0


@dataclass(frozen=True)
class CandidateSet:
    """A question's candidates (stage 1's order, gold passages added) and which are positive
    (gold, or containing an answer by the evaluation's ``has_answer`` rule)."""

    ids: list[str]
    positives: list[bool]


def _shuffled(items: list[Question], seed: int, salt: str) -> list[Question]:
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}|{salt}".encode()).digest()[:8],
                                       "big"))
    items = list(items)
    rng.shuffle(items)
    return items


def select_questions(sources: Sequence[str], counts: Sequence[int], tune_count: int, seed: int,
                     data_dir: str | None = None,
                     split: str = "fit") -> tuple[list[Question], list[Question]]:
    """``(training, tuning)`` questions: ``counts[i]`` training ones of each source from
    ``split`` (``fit`` = training questions outside the tuning slice; ``train`` = all of them)
    or FreebaseQA, and ``tune_count`` tuning ones per ODQA source from the ``tune`` split;
    never validation. A source is ``freebaseqa`` or any dataset of ``<data_dir>/odqa`` (the
    shared ones, or ``synthetic`` in a folder of ``invar-rag make-questions``). A count of -1
    takes every question of its source."""
    if len(sources) != len(counts):
        raise ValueError(f"train_datasets ({len(sources)}) and questions_per_dataset "
                         f"({len(counts)}) must have the same length")
    train, tune = [], []
    for source, count in zip(sources, counts):
        pool = freebaseqa(data=data_dir) if source == "freebaseqa" else \
            odqa_questions(split, [source], data=data_dir)
        train.extend(_shuffled(pool, seed, source)[: None if count < 0 else count])
        if source != "freebaseqa" and tune_count:
            tune.extend(_shuffled(odqa_questions("tune", [source], data=data_dir), seed,
                                  source)[:tune_count])
    return train, tune


def candidate_set(question: Question, ranking: Sequence[str], passages: Mapping[str, Passage],
                  depth: int) -> CandidateSet:
    """Stage 1's top ``depth``, with the question's gold passages put in place of the lowest
    ranked others when stage 1 missed them; a passage without text (it scores lowest when
    served) is no training candidate."""
    ids = [pid for pid in ranking if passages[pid].text.strip()][:depth]
    missing = [g for g in question.gold_passage_ids if g in passages and g not in ids][:depth]
    if missing:
        ids = ids[: depth - len(missing)] + missing
    positives = [pid in question.gold_passage_ids
                 or has_answer(question.answers, passages[pid].full_text()) for pid in ids]
    return CandidateSet(ids, positives)


def make_variants(question: str, rewrite_kinds: Sequence[str], num_rewrites: int,
                  context_words: Sequence[int], seed: int,
                  paraphrases: Sequence[str] = ()) -> list[Variant]:
    """Variant 0 (the original query), ``num_rewrites`` seeded rewrites, paraphrases, then one
    context resizing of the original query per entry of ``context_words``."""
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}|{question}".encode())
                                       .digest()[:8], "big"))
    kinds = rng.sample(list(rewrite_kinds), min(num_rewrites, len(rewrite_kinds)))
    return ([Variant("original", question)]
            + [Variant(kind, rewrite(question, kind, seed)) for kind in kinds]
            + [Variant("paraphrase", text) for text in paraphrases]
            + [Variant(f"context{words}", question, words) for words in context_words])


def passage_view(passage: Passage, answers: Sequence[str], words: int) -> Passage:
    """A passage in one variant: as the scorer serves it (``words = 0``: the whole node, read
    in windows), or its answer-centred window of ``words`` words (context resizing)."""
    if not words:
        return passage
    return Passage(passage.id, answer_window(passage.text, answers, words), passage.title)


def lm_paraphrases(questions: Sequence[str], generator: Any, count: int) -> list[list[str]]:
    """``count`` sampled paraphrases per question from the base LM (empty ones dropped)."""
    prompts = [f"Rewrite the question with different words, keeping its meaning.\n"
               f"Question: {q}\nRewritten question:" for q in questions for _ in range(count)]
    outputs = generator.generate(prompts, max_new_tokens=32, stop=["\n"], do_sample=True,
                                 temperature=0.8, top_p=0.95, show_progress=True)
    texts = [o.text.strip() for o in outputs]
    return [[t for t in texts[i * count : (i + 1) * count] if t] for i in range(len(questions))]


def build_examples(questions: Sequence[Question], candidates: Sequence[CandidateSet],
                   variants: Sequence[Sequence[Variant]], passages: Mapping[str, Passage],
                   scorer: LSRScorer) -> list[dict[str, Any]]:
    """Score every variant x candidate with the LM (LSR) and assemble the training examples.

    Questions whose candidate set is empty are left out (the caller reports how many).
    """
    pairs, spans = [], []
    for question, cands, views in zip(questions, candidates, variants):
        start = len(pairs)
        for view in views:
            for pid in cands.ids:
                context = resize_context(passages[pid], question.answers,
                                         view.context_words or LSR_SERVED_WORDS)
                pairs.append((lsr_prompt(context, view.query), question.answers[0]))
        spans.append((start, len(pairs)))
    scores = scorer.score(pairs)
    examples = []
    for question, cands, views, (start, stop) in zip(questions, candidates, variants, spans):
        if not cands.ids:
            continue
        grid = scores[start:stop].reshape(len(views), len(cands.ids))
        examples.append({"id": question.id, "dataset": question.dataset,
                         "answers": list(question.answers),
                         "variants": [v.query for v in views],
                         "variant_kinds": [v.kind for v in views],
                         "context_words": [v.context_words for v in views],
                         "candidate_ids": list(cands.ids), "positives": list(cands.positives),
                         "lm_logprobs": grid.tolist()})
    return examples


class RetrieverDataset(torch.utils.data.Dataset):
    """Examples with each variant's passage views and coarse cosines, as the training model
    consumes them.

    Args:
        examples: From :func:`build_examples`, with the driver's ``bm25`` and ``cosine`` of
            every variant x candidate (the cosine as stage 1 scores it).
        query_coarse: Coarse vector of every variant text.
        passage_coarse: Coarse vector of every candidate passage id.
        passages: The corpus by id.
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
            "views": [[passage_view(self.passages[p], ex["answers"], words)
                       for p in ex["candidate_ids"]] for words in ex["context_words"]],
            "query_coarse": np.stack([self.query_coarse[v] for v in ex["variants"]]),
            "passage_coarse": np.stack([self.passage_coarse[p] for p in ex["candidate_ids"]]),
            "cosine": np.asarray(ex["cosine"], dtype=np.float32),
            "bm25": np.asarray(ex["bm25"], dtype=np.float32),
            "positives": ex["positives"],
            "lm_logprobs": np.asarray(ex["lm_logprobs"], dtype=np.float32),
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad candidates to the batch's largest set; variants must agree in number."""
    variants = {len(it["variants"]) for it in items}
    if len(variants) != 1:
        raise ValueError(f"examples in a batch have different variant counts {sorted(variants)}")
    width = max(len(it["positives"]) for it in items)
    batch, count = len(items), variants.pop()
    dim = items[0]["passage_coarse"].shape[1]
    mask = torch.zeros(batch, width, dtype=torch.bool)
    positives = torch.zeros(batch, width, dtype=torch.bool)
    lm = torch.zeros(batch, count, width)
    bm25 = torch.zeros(batch, count, width)
    cosine = torch.zeros(batch, count, width)
    passage_coarse = torch.zeros(batch, width, dim)
    for i, it in enumerate(items):
        c = len(it["positives"])
        mask[i, :c] = True
        positives[i, :c] = torch.tensor(it["positives"])
        lm[i, :, :c] = torch.from_numpy(it["lm_logprobs"])
        bm25[i, :, :c] = torch.from_numpy(it["bm25"])
        cosine[i, :, :c] = torch.from_numpy(it["cosine"])
        passage_coarse[i, :c] = torch.from_numpy(it["passage_coarse"])
    return {"variants": [it["variants"] for it in items], "views": [it["views"] for it in items],
            "query_coarse": torch.from_numpy(np.stack([it["query_coarse"] for it in items])),
            "passage_coarse": passage_coarse, "cosine": cosine, "bm25": bm25, "mask": mask,
            "positives": positives, "lm_logprobs": lm}


def bm25_feature(retriever: Any, queries: list[str], ids: list[list[str]]) -> list[np.ndarray]:
    """The BM25 feature of the candidates when stage 1 has BM25, else zeros."""
    found = retriever.bm25_term(queries, ids)
    return found if found is not None else [np.zeros(len(i), np.float32) for i in ids]
