"""Train the Invar retriever (retrieval stage of Invar-RAG, DESIGN.md §2).

Usage::

    python -m training.train_retriever training/configs/retriever_smollm2_cpu.json
    invar-rag train-retriever training/configs/retriever_smollm2_cpu.json
    torchrun --nproc_per_node 2 -m training.train_retriever CONFIG.json   # data parallel

A JSON file, optionally followed by flags that override it (or flags alone); the keys are the
fields of the dataclasses below plus the HF ``TrainingArguments``. Unknown keys are an error.
Re-running the same command resumes: LSR scores come from their cache and training from the
last complete checkpoint.

Steps: 1 parse arguments, 2 load models, 3 select questions and mine candidates, 4 build
variants and score them with the LM (LSR), 5 train, 6 save the system directory, 7 index the
corpus and choose the coarse-score fusion weight on held-apart training questions.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainingArguments

from invar_rag_integrations.data import Passage, Question
from invar_rag_integrations.retrieval.invar import InvarSettings

from .query_variants import REWRITE_KINDS
from .trainer_utils import parse_config


@dataclass
class ModelArguments(InvarSettings):
    """The base LM and coarse encoder, plus every representation setting of ``InvarSettings``
    (``beta`` is the fusion weight used when ``index_after_training`` does not choose one)."""

    base_model: str = "smollm2"
    coarse_encoder: str = "minilm"

    def settings(self) -> InvarSettings:
        names = set(InvarSettings.__dataclass_fields__)
        return InvarSettings(**{k: v for k, v in asdict(self).items() if k in names})


@dataclass
class DataArguments:
    """Training questions, candidates, variants and the LSR step."""

    data_dir: str | None = field(default=None, metadata={"help": "folder with odqa/ and train/"})
    train_datasets: list[str] = field(
        default_factory=lambda: ["nq", "squad", "popqa_longtail", "freebaseqa"])
    questions_per_dataset: list[int] = field(default_factory=lambda: [120, 120, 120, 60])
    tune_questions_per_dataset: int = field(
        default=60, metadata={"help": "held-apart train-split questions to choose fusion beta"})
    num_candidates: int = 8
    mine_depth: int = 20
    answer_positives: bool = True
    drop_answer_negatives: bool = True
    rewrite_kinds: list[str] = field(default_factory=lambda: list(REWRITE_KINDS))
    num_rewrites: int = 1
    lm_paraphrases: int = field(default=0, metadata={"help": "LM paraphrases per question"})
    context_words: list[int] = field(
        default_factory=lambda: [64, 32],
        metadata={"help": "context size shown to the LM: first = default, others = resizings"})
    lsr_batch_size: int = 16
    lsr_cache_dir: str | None = field(
        default=None, metadata={"help": "default: <output_dir>/lsr_cache"})


@dataclass
class LossArguments:
    """``L = L_nce + alpha * L_align + lam * L_invar`` and the fusion-weight search."""

    alpha: float = 1.0
    lam: float = 1.0
    lsr_beta: float = 1.0
    kappa: float = 1.0
    mu: float = 0.1
    use_nce: bool = True
    use_align: bool = True
    use_invar: bool = True
    in_batch_negatives: bool = True
    train_fusion_beta: float = field(
        default=0.0, metadata={"help": "train on s + this * cos(c(q), c(d)) (0 = LM score only)"})
    fusion_betas: list[float] = field(default_factory=lambda: [0.0, 2.5, 5.0, 10.0, 20.0, 40.0])
    index_after_training: bool = field(
        default=True, metadata={"help": "index the ODQA corpus and choose beta (steps 6-7)"})


def parse_arguments(argv: Sequence[str]) -> tuple[ModelArguments, DataArguments, LossArguments,
                                                  TrainingArguments]:
    """Step 1: a JSON config and/or flags (see :func:`training.trainer_utils.parse_config`)."""
    return parse_config((ModelArguments, DataArguments, LossArguments, TrainingArguments), argv)


def mine(questions: list[Question], passages: list[Passage], coarse_encoder: Any,
         data: DataArguments) -> list:
    """Step 3: candidates = gold + MiniLM and BM25 hard negatives."""
    from invar_rag_integrations.retrieval import BM25Retriever, DenseRetriever

    from .candidates import mine_candidates

    by_id = {p.id: p for p in passages}
    queries = [q.question for q in questions]
    depth = min(data.mine_depth, len(passages))
    rankings = []
    for retriever in (DenseRetriever(coarse_encoder), BM25Retriever()):
        retriever.index(passages)
        rankings.append([r.ids for r in retriever.search(queries, depth)])
    return [mine_candidates(q, [r[i] for r in rankings], by_id, data.num_candidates,
                            data.answer_positives, data.drop_answer_negatives)
            for i, q in enumerate(questions)]


def choose_fusion_beta(retriever: Any, questions: list[Question], passages: dict[str, Passage],
                       betas: Sequence[float]) -> tuple[float, dict[str, dict[str, float]]]:
    """Step 7: the ``beta`` with the best mean Acc@1 (then Acc@5) over datasets."""
    from invar_rag_integrations.evaluation.retrieval_eval import accuracy_rows, hit_ranks

    queries = [q.question for q in questions]
    base = retriever.query_vectors(queries, beta=0.0)
    coarse = retriever.encoder.coarse(queries)
    table: dict[str, dict[str, float]] = {}
    for beta in betas:
        vectors = base.copy()
        vectors[:, -coarse.shape[1]:] = beta * coarse
        results = retriever.search_vectors(vectors, 5)
        rows = accuracy_rows("invar", "tune", questions, hit_ranks(questions, results, passages),
                             (1, 5))
        table[str(beta)] = {m: float(np.mean([r["value"] for r in rows if r["metric"] == m]))
                            for m in ("acc@1", "acc@5")}
    best = max(betas, key=lambda b: (table[str(b)]["acc@1"], table[str(b)]["acc@5"]))
    return float(best), table


def main(argv: Sequence[str] | None = None) -> Path:
    """Run all steps; returns the system directory."""
    import torch

    from invar_rag_integrations.evaluation.datasets import odqa_corpus
    from invar_rag_integrations.models import load_base_lm, load_coarse_encoder
    from invar_rag_integrations.retrieval import InvarRetriever
    from invar_rag_integrations.retrieval.artifacts import save_retriever
    from invar_rag_integrations.retrieval.dense import encoder_identity
    from invar_rag_integrations.retrieval.embedding_cache import cached_embeddings
    from invar_rag_integrations.retrieval.invar import InvarEncoder, add_retriever_adapter

    from .losses import InvarRetrievalLoss
    from .lsr import LSRScorer, lsr_cache_file
    from .retriever_data import (
        RetrieverDataset,
        build_examples,
        collate,
        lm_paraphrases,
        make_variants,
        select_questions,
    )
    from .retriever_trainer import (
        LossTermsCallback,
        NonFiniteLossError,
        RetrieverTrainingModel,
    )
    from .trainer_utils import TrainedWeightsTrainer, last_complete_checkpoint

    # 1. arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, data, loss_args, train_args = parse_arguments(argv)
    settings = model_args.settings()
    train_args.remove_unused_columns = False
    if train_args.ddp_find_unused_parameters is None:  # every LoRA weight is used each step
        train_args.ddp_find_unused_parameters = False
    output = Path(train_args.output_dir)
    started = time.perf_counter()

    # 2. models: the base LM scores LSR first, then gets the retriever adapter
    lm, tokenizer = load_base_lm(model_args.base_model)
    coarse_encoder = load_coarse_encoder(model_args.coarse_encoder)

    with train_args.main_process_first(desc="data preparation"):
        # 3. questions and candidates
        passages = odqa_corpus(data.data_dir)
        by_id = {p.id: p for p in passages}
        questions, tune = select_questions(data.train_datasets, data.questions_per_dataset,
                                           data.tune_questions_per_dataset, train_args.seed,
                                           data.data_dir)
        candidates = mine(questions, passages, coarse_encoder, data)
        empty = sum(not c.ids for c in candidates)
        if empty:
            print(f"warning: {empty} question(s) have no candidates and are left out",
                  file=sys.stderr)

        # 4. variants and LSR scores (cached, resumable)
        paraphrases: list[list[str]] = [[] for _ in questions]
        if data.lm_paraphrases:
            from invar_rag_integrations.generation.hf import HFGenerator

            torch.manual_seed(train_args.seed)
            paraphrases = lm_paraphrases([q.question for q in questions],
                                         HFGenerator(lm, tokenizer), data.lm_paraphrases)
            width = min(len(p) for p in paraphrases)  # every example needs the same V
            paraphrases = [p[:width] for p in paraphrases]
        variants = [make_variants(q.question, data.rewrite_kinds, data.num_rewrites,
                                  data.context_words, train_args.seed, para)
                    for q, para in zip(questions, paraphrases)]
        cache = lsr_cache_file(data.lsr_cache_dir or output / "lsr_cache",
                               lm.invar_source.identity)
        scorer = LSRScorer(lm, tokenizer, cache, data.lsr_batch_size,
                           show_progress=train_args.process_index == 0)
        prep_started = time.perf_counter()
        examples = build_examples(questions, candidates, variants, by_id, scorer)
        prep_seconds = time.perf_counter() - prep_started
        if not examples:
            raise ValueError("no training examples: every question had an empty candidate set")
        texts = sorted({v for ex in examples for v in ex["variants"]})
        query_coarse = dict(zip(texts, coarse_encoder.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)))
        corpus_coarse, _ = cached_embeddings(
            [p.full_text() for p in passages], encoder_identity(coarse_encoder) or "",
            lambda t: coarse_encoder.encode(t, batch_size=64, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=True))
        passage_coarse = {p.id: corpus_coarse[i] for i, p in enumerate(passages)}
    dataset = RetrieverDataset(examples, query_coarse, passage_coarse, by_id)

    # 5. train LoRA(retriever) + projector
    torch.manual_seed(train_args.seed)
    encoder = InvarEncoder(add_retriever_adapter(lm, settings), tokenizer, coarse_encoder,
                           settings)
    loss = InvarRetrievalLoss(loss_args.alpha, loss_args.lam, loss_args.lsr_beta, loss_args.kappa,
                              loss_args.mu, loss_args.use_nce, loss_args.use_align,
                              loss_args.use_invar)
    model = RetrieverTrainingModel(encoder, loss, loss_args.in_batch_negatives,
                                   loss_args.train_fusion_beta)
    trainer = TrainedWeightsTrainer(model=model, args=train_args, train_dataset=dataset,
                                    data_collator=collate, callbacks=[LossTermsCallback(model)])
    resume = last_complete_checkpoint(output)
    if resume:
        print(f"resuming from {resume}", file=sys.stderr)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except NonFiniteLossError as err:
        last = last_complete_checkpoint(output)
        raise SystemExit(f"training stopped at step {trainer.state.global_step}: {err}. "
                         f"Last good checkpoint: {last or 'none'}; lower the learning rate or "
                         f"check the LSR cache, then re-run to resume from it.") from None
    if not trainer.is_world_process_zero():
        return output

    # 6. the system directory
    all_args = {"command": shlex.join(["invar-rag", "train-retriever", *argv]),
                "model": asdict(model_args), "data": asdict(data), "loss": asdict(loss_args),
                "training": train_args.to_dict()}
    metrics = {"train_examples": len(examples), "lsr_prompts": int(sum(
        len(ex["variants"]) * len(ex["candidate_ids"]) for ex in examples)),
        "lsr_seconds": round(prep_seconds, 1), "lsr_computed": scorer.computed,
        "empty_candidate_sets": empty,
        **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
    save_retriever(encoder, output, all_args, metrics)

    # 7. index the corpus, choose the fusion weight on the tuning questions, save both
    if loss_args.index_after_training:
        from invar_rag_integrations.retrieval.artifacts import read_manifest

        retriever = InvarRetriever(encoder, output, read_manifest(output)["retriever"]["hash"])
        retriever.index(passages)
        retriever.save(output / "index", passages)
        if tune:
            settings.beta, table = choose_fusion_beta(retriever, tune, by_id,
                                                      loss_args.fusion_betas)
            metrics["fusion_beta_search"] = table
            print(f"fusion beta {settings.beta} (tuning Acc@1/5 by beta: {table})",
                  file=sys.stderr)
    metrics["total_seconds"] = round(time.perf_counter() - started, 1)
    save_retriever(encoder, output, all_args, metrics)
    print(f"saved the retriever to {output}", file=sys.stderr)
    return output


if __name__ == "__main__":
    main()
