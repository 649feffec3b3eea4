"""``ce-ft``: the cross-encoder reranker a user would train instead of an LLM retriever.

all-MiniLM-L6-v2's encoder with a fresh one-logit head, trained with sentence-transformers'
``CrossEncoderTrainer`` on the same training questions as ``minilm-ft`` (positives and mined
hard negatives), then reranking the same stage-1 candidates as the Invar scorer. The recipe
(``loss``, learning rate) was chosen on the tuning slice by ``python -m
benchmarks.tune_cross_encoder`` (``benchmarks/results/cross_encoder_tuning.json``): a softmax
over the positive, its hard negatives and in-batch negatives learns at this data size, where
pointwise BCE stays near the label prior. The checkpoint with the best tuning Acc@1 (the
untrained start included) is kept.
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from invar_rag_integrations.data import Passage, Question

LOSSES = ("mnrl", "bce")


@dataclass
class CrossEncoderSettings:
    """Training settings of ``ce-ft`` (part of its cache key).

    Attributes:
        loss: ``mnrl`` (softmax over the positive, ``hard_negatives`` mined negatives and
            ``in_batch_negatives`` other questions' passages) or ``bce`` (pointwise, positives
            weighted by ``hard_negatives``).
        hard_negatives: Mined negatives per question.
        in_batch_negatives: Other questions' passages per question (``mnrl``).
        learning_rate: Peak learning rate (linear decay, 10% warm-up).
        epochs: Passes over the training questions.
        batch_size: Questions per step.
        max_length: Word pieces the cross-encoder reads of a (question, passage) pair.
        eval_every: Steps between tuning evaluations (the best checkpoint is kept).
        candidates: Stage-1 (RRF) passages reranked per question, in tuning and in serving.
        train_questions: Train on a seeded sample of this many questions (``None``: all, the
            questions ``minilm-ft`` trains on; one epoch over them took about an hour on 2 CPU
            cores).
        mine_depth: MiniLM and BM25 results mined per question.
        tune_per_dataset: Tuning questions per dataset.
        encoder: The BERT encoder the cross-encoder starts from (``minilm`` or a folder).
        seed: Shuffling and initialisation seed.
    """

    loss: str = "mnrl"
    hard_negatives: int = 3
    in_batch_negatives: int = 2
    learning_rate: float = 2e-4
    epochs: int = 1
    batch_size: int = 16
    max_length: int = 256
    eval_every: int = 25
    candidates: int = 5
    train_questions: int | None = None
    mine_depth: int = 20
    tune_per_dataset: int = 100
    encoder: str = "minilm"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if min(self.hard_negatives, self.epochs, self.batch_size, self.eval_every,
               self.candidates) < 1 or self.in_batch_negatives < 0:
            raise ValueError("hard_negatives, epochs, batch_size, eval_every and candidates must "
                             "be >= 1 and in_batch_negatives >= 0")


def training_rows(train: Sequence[Any], passages: dict[str, Passage],
                  settings: CrossEncoderSettings) -> dict[str, list]:
    """The training dataset's columns: for ``mnrl`` one row per question (query, positive,
    negative_1..n); for ``bce`` one row per pair with its label. Questions with fewer mined
    negatives than ``hard_negatives`` are left out."""
    rng = random.Random(settings.seed)
    n = settings.hard_negatives
    names = [f"negative_{i + 1}" for i in range(n)]
    rows: dict[str, list] = ({"query": [], "positive": [], **{c: [] for c in names}}
                             if settings.loss == "mnrl" else {"query": [], "passage": [],
                                                              "label": []})
    for example in train:
        if len(example.negatives) < n:
            continue
        query = example.question.question
        positive = passages[rng.choice(example.positives)].full_text()
        negatives = [passages[i].full_text() for i in example.negatives[:n]]
        if settings.loss == "mnrl":
            rows["query"].append(query)
            rows["positive"].append(positive)
            for column, text in zip(names, negatives):
                rows[column].append(text)
        else:
            for text, label in [(positive, 1.0)] + [(t, 0.0) for t in negatives]:
                rows["query"].append(query)
                rows["passage"].append(text)
                rows["label"].append(label)
    return rows


def train_cross_encoder(train: Sequence[Any], tune: Sequence[Question],
                        pools: Sequence[Sequence[str]], passages: Sequence[Passage],
                        output: Path, settings: CrossEncoderSettings) -> list[dict]:
    """Train the cross-encoder into ``output / "best"`` (the checkpoint with the best tuning
    Acc@1 over ``pools``, each tuning question's stage-1 candidates).

    Returns the learning curve: tuning Acc@1 per dataset and their mean at step 0 (the
    untrained model) and every ``eval_every`` steps, with the running loss and seconds.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.cross_encoder import (
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
        losses,
    )
    from transformers import TrainerCallback

    from invar_rag_integrations.evaluation.metrics import tuning_accuracy
    from invar_rag_integrations.invar.precision import cpu_has_fast_bf16
    from invar_rag_integrations.models.registry import resolve_coarse_encoder
    from invar_rag_integrations.retrieval.cross_encoder import load_cross_encoder

    by_id = {p.id: p for p in passages}
    torch.manual_seed(settings.seed)
    model = load_cross_encoder(resolve_coarse_encoder(settings.encoder).path, settings.max_length)
    pairs = [(q.question, by_id[i].full_text()) for q, pool in zip(tune, pools) for i in pool]
    started = time.perf_counter()

    def tuning() -> dict[str, float]:
        was_training = model.model.training
        scores = model.predict(pairs, batch_size=64, show_progress_bar=False)
        model.model.train(was_training)
        ranked, start = [], 0
        for pool in pools:
            ranked.append([pool[int(np.argmax(scores[start : start + len(pool)]))]])
            start += len(pool)
        return tuning_accuracy(tune, [by_id[r[0]] for r in ranked])

    best_dir = output / "best"
    curve = [{"step": 0, "seconds": 0.0, **tuning()}]
    model.save(str(best_dir))
    print(f"ce-ft tuning Acc@1 at step 0: {curve[-1]}", file=sys.stderr, flush=True)
    losses_seen: list[float] = []

    class Evaluate(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                losses_seen.append(float(logs["loss"]))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            last = state.global_step == state.max_steps
            if state.global_step % settings.eval_every and not last:
                return
            point = {"step": state.global_step,
                     "seconds": round(time.perf_counter() - started, 1),
                     "loss": losses_seen[-1] if losses_seen else None, **tuning()}
            curve.append(point)
            print(f"ce-ft tuning Acc@1 at step {point['step']}/{state.max_steps}: {point}",
                  file=sys.stderr, flush=True)
            if point["mean"] > max(p["mean"] for p in curve[:-1]):
                model.save(str(best_dir))

    if settings.train_questions is not None:  # a seeded sample across the datasets
        train = random.Random(settings.seed).sample(list(train),
                                                    min(settings.train_questions, len(train)))
    rows = training_rows(train, by_id, settings)
    if settings.loss == "mnrl":
        loss = losses.MultipleNegativesRankingLoss(model, num_negatives=settings.in_batch_negatives)
        batch = settings.batch_size
    else:
        loss = losses.BinaryCrossEntropyLoss(
            model, pos_weight=torch.tensor(float(settings.hard_negatives)))
        batch = settings.batch_size * (1 + settings.hard_negatives)
    args = CrossEncoderTrainingArguments(
        output_dir=str(output / "run"), num_train_epochs=settings.epochs,
        per_device_train_batch_size=batch, learning_rate=settings.learning_rate,
        warmup_steps=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES
        if settings.loss == "mnrl" else BatchSamplers.BATCH_SAMPLER, save_strategy="no",
        logging_steps=5, report_to="none", use_cpu=True, seed=settings.seed,
        bf16=cpu_has_fast_bf16())  # bf16 autocast where the CPU multiplies bf16 natively
    CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), loss=loss,
                        callbacks=[Evaluate()]).train()
    shutil.rmtree(output / "run", ignore_errors=True)
    return curve
