"""The retrievers a user would train instead of an LLM retriever, on the same questions:

- ``minilm-ft``: all-MiniLM-L6-v2 fine-tuned with sentence-transformers'
  ``MultipleNegativesRankingLoss`` on (question, positive, mined hard negative) triplets, as
  llama-index-finetuning does;
- ``minilm-adapter``: a residual linear query adapter on frozen MiniLM vectors, trained with a
  softmax over the whole corpus;
- ``ce-ft``: a MiniLM cross-encoder reranking the two-stage retriever's stage-1 candidates
  (``cross_encoder.py``).

All train on the ``fit`` split of nq, squad and popqa_longtail, or of the synthetic questions
of ``invar-rag make-questions`` (positives: gold passages, or
for questions without them the mined passages that contain an answer) and keep the checkpoint
(epoch, or step for ``ce-ft``) with the best Acc@1 on the ``tune`` split (the untrained start
included). Trained baselines
are cached under ``$INVAR_RAG_CACHE/baselines`` with their training log (curve and time).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from invar_rag_integrations.data import Passage, Question
from invar_rag_integrations.evaluation.metrics import tuning_accuracy
from invar_rag_integrations.models.encoding import PASSAGE, QUERY, encode

from .candidates import mine_candidates
from .cross_encoder import CrossEncoderSettings, train_cross_encoder

DATASETS = ("nq", "squad", "popqa_longtail")
BASELINES = ("minilm-ft", "minilm-adapter", "ce-ft")


@dataclass
class BaselineSettings:
    """Training settings of both baselines (part of their cache key).

    Attributes:
        mine_depth: MiniLM and BM25 results mined per question for positives and negatives.
        epochs: minilm-ft's training epochs (the best on the tuning slice is kept; one epoch
            over ~3,000 triplets took 23 min on 2 cores with bf16 autocast).
        batch_size: Triplets (minilm-ft) or questions (minilm-adapter) per step.
        ft_learning_rate, adapter_learning_rate: Learning rates.
        adapter_epochs: minilm-adapter's epochs (the best on the tuning slice is kept).
        tune_per_dataset: Tuning questions per dataset used for early stopping.
        pool_depth: For minilm-ft's tuning Acc@1, each tuning question ranks its gold passages
            plus the base MiniLM's and BM25's top ``pool_depth`` (re-encoding the whole corpus
            per epoch would dominate the cost on a CPU).
        seed: Shuffling and initialisation seed.
    """

    mine_depth: int = 20
    epochs: int = 1
    batch_size: int = 32
    ft_learning_rate: float = 2e-5
    adapter_learning_rate: float = 1e-3
    adapter_epochs: int = 30
    tune_per_dataset: int = 100
    pool_depth: int = 10
    seed: int = 0


@dataclass(frozen=True)
class Example:
    """A training question with its positive and hard-negative passage ids."""

    question: Question
    positives: list[str]
    negatives: list[str]


def mine_examples(questions: Sequence[Question], passages: Sequence[Passage],
                  rankings: Sequence[Sequence[Sequence[str]]], depth: int) -> list[Example]:
    """Positives and hard negatives of each question from the mining retrievers' rankings;
    questions without any positive are left out."""
    by_id = {p.id: p for p in passages}
    examples = []
    for i, question in enumerate(questions):
        found = mine_candidates(question, [r[i] for r in rankings], by_id, depth + 1)
        positives = [pid for pid, pos in zip(found.ids, found.positives) if pos]
        negatives = [pid for pid, pos in zip(found.ids, found.positives) if not pos]
        if positives:
            examples.append(Example(question, positives, negatives))
    return examples


# --- minilm-adapter ---------------------------------------------------------------------------


def train_query_adapter(train: Sequence[Example], tune: Sequence[Question],
                        passages: Sequence[Passage], corpus: np.ndarray,
                        query_vectors: Callable[[list[str]], np.ndarray],
                        settings: BaselineSettings) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """``(W, b, curve)``: a residual linear query adapter trained with a softmax over the whole
    corpus (multi-positive), the epoch with the best tuning Acc@1 kept."""
    import torch

    torch.manual_seed(settings.seed)
    rows = {p.id: i for i, p in enumerate(passages)}
    dim = corpus.shape[1]
    weight = torch.zeros(dim, dim, requires_grad=True)
    bias = torch.zeros(dim, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=settings.adapter_learning_rate)
    docs = torch.from_numpy(corpus)
    train_q = torch.from_numpy(query_vectors([e.question.question for e in train]))
    positive = torch.zeros(len(train), len(passages), dtype=torch.bool)
    for i, example in enumerate(train):
        positive[i, [rows[p] for p in example.positives]] = True
    tune_q = torch.from_numpy(query_vectors([q.question for q in tune]))

    def adapted(q: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(q + q @ weight.T + bias, dim=-1)

    def tuning() -> dict[str, float]:
        with torch.no_grad():
            best = (adapted(tune_q) @ docs.T).argmax(-1).tolist()
        return tuning_accuracy(tune, [passages[i] for i in best])

    curve = [{"epoch": 0, **tuning()}]
    best = (curve[0]["mean"], weight.detach().clone(), bias.detach().clone())
    generator = torch.Generator().manual_seed(settings.seed)
    for epoch in range(1, settings.adapter_epochs + 1):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            logits = adapted(train_q[batch]) @ docs.T / 0.05
            log_probs = torch.log_softmax(logits, dim=-1)
            loss = -torch.logsumexp(log_probs.masked_fill(~positive[batch], -1e9), -1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        curve.append({"epoch": epoch, "loss": loss.item(), **tuning()})
        if curve[-1]["mean"] > best[0]:
            best = (curve[-1]["mean"], weight.detach().clone(), bias.detach().clone())
    return best[1].numpy(), best[2].numpy(), curve


# --- minilm-ft --------------------------------------------------------------------------------


def train_minilm_ft(train: Sequence[Example], tune: Sequence[Question],
                    passages: Sequence[Passage], pools: Sequence[Sequence[str]],
                    output: Path, settings: BaselineSettings) -> list[dict]:
    """Fine-tune MiniLM with MultipleNegativesRankingLoss (one mined hard negative per
    question) into ``output``; the epoch with the best tuning Acc@1 (over ``pools``) is kept.

    Returns the curve (tuning Acc@1 per epoch, epoch 0 = the untrained model).
    """
    import random

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )
    from transformers import TrainerCallback

    from invar_rag_integrations.invar.precision import cpu_has_fast_bf16
    from invar_rag_integrations.models import load_coarse_encoder

    by_id = {p.id: p for p in passages}
    rng = random.Random(settings.seed)
    rows = {"anchor": [], "positive": [], "negative": []}
    for example in train:
        if not example.negatives:
            continue
        rows["anchor"].append(example.question.question)
        rows["positive"].append(by_id[rng.choice(example.positives)].full_text())
        rows["negative"].append(by_id[example.negatives[0]].full_text())
    model = load_coarse_encoder("minilm")
    pool_texts = sorted({pid for pool in pools for pid in pool})

    def tuning() -> dict[str, float]:
        vectors = dict(zip(pool_texts, encode(model, [by_id[i].full_text() for i in pool_texts],
                                              PASSAGE)))
        queries = encode(model, [q.question for q in tune], QUERY)
        ranked = [[pool[int(np.argmax([vectors[i] @ q for i in pool]))]]
                  for pool, q in zip(pools, queries)]
        return tuning_accuracy(tune, [by_id[r[0]] for r in ranked])

    curve = [{"epoch": 0, **tuning()}]
    print(f"minilm-ft tuning Acc@1 at epoch 0: {curve[-1]}", file=sys.stderr, flush=True)
    best_dir = output / "best"
    model.save(str(best_dir))
    best = curve[0]["mean"]

    class EpochEnd(TrainerCallback):
        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            nonlocal best
            curve.append({"epoch": round(state.epoch), "step": state.global_step, **tuning()})
            print(f"minilm-ft tuning Acc@1 at epoch {curve[-1]['epoch']}: {curve[-1]}",
                  file=sys.stderr, flush=True)
            if curve[-1]["mean"] > best:
                best = curve[-1]["mean"]
                model.save(str(best_dir))

    torch.manual_seed(settings.seed)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output / "run"), num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size, learning_rate=settings.ft_learning_rate,
        warmup_ratio=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no",
        logging_steps=10, report_to="none", use_cpu=True, seed=settings.seed,
        bf16=cpu_has_fast_bf16())  # bf16 autocast where the CPU multiplies bf16 natively
    trainer = SentenceTransformerTrainer(model=model, args=args,
                                         train_dataset=Dataset.from_dict(rows),
                                         loss=MultipleNegativesRankingLoss(model),
                                         callbacks=[EpochEnd()])
    trainer.train()
    shutil.rmtree(output / "run", ignore_errors=True)
    return curve


# --- cached training --------------------------------------------------------------------------


def trained_baseline(name: str, data_dir: str | None = None,
                     settings: BaselineSettings | CrossEncoderSettings | None = None,
                     datasets: Sequence[str] = DATASETS, label: str | None = None) -> Any:
    """The ``minilm-ft``, ``minilm-adapter`` or ``ce-ft`` retriever (not yet indexed), trained
    on first use and cached; its log (``training.json``: curve, time, counts) sits beside it.

    Args:
        name: ``minilm-ft``, ``minilm-adapter`` or ``ce-ft``.
        data_dir: The folder with ``odqa/`` whose corpus and questions it trains on.
        settings: Training settings (default :class:`BaselineSettings`, for ``ce-ft``
            :class:`CrossEncoderSettings`).
        datasets: The question sets of ``data_dir`` (e.g. ``["synthetic"]`` in a folder of
            ``invar-rag make-questions``).
        label: The retriever's name in results (default ``name``).

    Raises:
        ValueError: An unknown baseline name.
    """
    from invar_rag_integrations.evaluation import odqa_corpus, odqa_questions
    from invar_rag_integrations.paths import cache_dir
    from invar_rag_integrations.retrieval import BM25Retriever, DenseRetriever, FusionRetriever
    from invar_rag_integrations.retrieval.embedding_cache import texts_hash

    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    settings = settings or (CrossEncoderSettings() if name == "ce-ft" else BaselineSettings())
    passages = odqa_corpus(data_dir)
    train_q = odqa_questions("fit", datasets, None, data_dir)
    tune_q = odqa_questions("tune", datasets, settings.tune_per_dataset, data_dir)
    key = hashlib.sha256(json.dumps([name, asdict(settings), texts_hash(
        [p.full_text() for p in passages]), [q.id for q in train_q + tune_q]]).encode())
    folder = cache_dir() / "baselines" / f"{name}-{key.hexdigest()[:16]}"
    log_file = folder / "training.json"
    if log_file.is_file():
        return _load_baseline(name, folder, label)

    started = time.perf_counter()
    minilm = DenseRetriever("minilm")
    bm25 = BM25Retriever()
    for retriever in (minilm, bm25):
        retriever.index(passages)
    queries = [q.question for q in train_q + tune_q]
    depth = max(settings.mine_depth, getattr(settings, "pool_depth", 0))
    rankings = [[r.ids for r in retriever.search(queries, depth)] for retriever in (minilm, bm25)]
    train = mine_examples(train_q, passages, [r[: len(train_q)] for r in rankings],
                          settings.mine_depth)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if name == "minilm-adapter":
        weight, bias, curve = train_query_adapter(train, tune_q, passages, minilm.vectors(),
                                                  minilm.encode, settings)
        from safetensors.numpy import save_file

        save_file({"weight": weight, "bias": bias}, str(tmp / "adapter.safetensors"))
    elif name == "ce-ft":  # it reranks the candidates stage 1 (RRF) proposes
        stage1 = FusionRetriever([bm25, minilm])
        pools = [r.ids for r in stage1.search([q.question for q in tune_q], settings.candidates)]
        curve = train_cross_encoder(train, tune_q, pools, passages, tmp, settings)
    else:
        dense_tune, bm25_tune = (r[len(train_q):] for r in rankings)
        pools = [list(dict.fromkeys([*q.gold_passage_ids, *dense_tune[i][: settings.pool_depth],
                                     *bm25_tune[i][: settings.pool_depth]]))
                 for i, q in enumerate(tune_q)]
        curve = train_minilm_ft(train, tune_q, passages, pools, tmp, settings)
    used = getattr(settings, "train_questions", None)  # ce-ft trains on a sample
    log = {"baseline": name, "settings": asdict(settings),
           "train_questions": len(train) if used is None else min(used, len(train)),
           "tune_questions": len(tune_q), "curve": curve,
           "train_seconds": round(time.perf_counter() - started, 1)}
    (tmp / "training.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    print(f"{name}: trained in {log['train_seconds']} s; tuning curve {curve}", file=sys.stderr)
    return _load_baseline(name, folder, label)


def _load_baseline(name: str, folder: Path, label: str | None = None) -> Any:
    from safetensors.numpy import load_file

    from invar_rag_integrations.models import load_coarse_encoder
    from invar_rag_integrations.retrieval import DenseRetriever, QueryAdapterRetriever
    from invar_rag_integrations.retrieval.cross_encoder import (
        CrossEncoderRetriever,
        load_cross_encoder,
    )

    log = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    if name == "minilm-adapter":
        weights = load_file(str(folder / "adapter.safetensors"))
        retriever = QueryAdapterRetriever(weights["weight"], weights["bias"], "minilm",
                                          label=label or name)
    elif name == "ce-ft":
        retriever = CrossEncoderRetriever(load_cross_encoder(folder / "best"),
                                          log["settings"]["candidates"], label=label or name)
    else:
        retriever = DenseRetriever(load_coarse_encoder(str(folder / "best")),
                                   label=label or name)
    retriever.training_log = log
    return retriever
