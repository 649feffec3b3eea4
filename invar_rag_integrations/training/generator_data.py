"""Generation-stage training data: prompts over the frozen retriever's top-k passages, with the
loss on the answer tokens only."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from invar_rag_integrations.data import Passage, Question
from invar_rag_integrations.evaluation.metrics import has_answer
from invar_rag_integrations.generation import PromptTemplate

IGNORE_INDEX = -100  # label of positions that carry no loss


def answer_target(answers: Sequence[str], passages: Sequence[Passage]) -> str:
    """The answer to train on: the first gold answer the passages contain (so the generator
    learns to copy the span it is shown), else the first gold answer."""
    for answer in answers:
        if any(has_answer([answer], p.full_text()) for p in passages):
            return answer
    return answers[0]


def tokenize_example(tokenizer: Any, prompt: str, target: str) -> dict[str, list[int]]:
    """``input_ids`` = prompt + target (``PromptTemplate.target``: the answer and what ends it);
    ``labels`` mask every prompt token, so the loss falls on the answer and its end (generation
    stops there)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return {"input_ids": prompt_ids + answer_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}


def build_examples(questions: Sequence[Question], retrieved: Sequence[Sequence[str]],
                   passages: Mapping[str, Passage], template: PromptTemplate, tokenizer: Any,
                   max_prompt_tokens: int) -> tuple[list[dict[str, list[int]]], int]:
    """Tokenised examples, one per question; returns them and how many prompts were cut."""
    def count(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    examples, cut = [], 0
    for question, ids in zip(questions, retrieved):
        shown = [passages[i] for i in ids]
        fitted = template.fit(question.question, shown, count, max_prompt_tokens)
        cut += fitted.truncated
        examples.append(tokenize_example(tokenizer, fitted.text, template.target(
            answer_target(question.answers, shown))))
    return examples, cut


def make_collate(pad_id: int) -> Callable[[list[dict[str, list[int]]]], dict[str, torch.Tensor]]:
    """Right-pad a batch; padding is masked in ``attention_mask`` and ``labels``."""
    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[row, :n] = torch.tensor(ex["input_ids"])
            labels[row, :n] = torch.tensor(ex["labels"])
            attention[row, :n] = 1
        return {"input_ids": ids, "attention_mask": attention, "labels": labels}

    return collate
