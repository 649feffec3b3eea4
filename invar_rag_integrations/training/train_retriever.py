"""Train the Invar scorer (retrieval stage of Invar-RAG, DESIGN.md §2).

Usage::

    python -m invar_rag_integrations.training.train_retriever \
        training/configs/retriever_smollm2_cpu.json
    invar-rag train-retriever training/configs/retriever_smollm2_cpu.json [--flag value ...]
    torchrun --nproc_per_node 2 -m invar_rag_integrations.training.train_retriever \
        CONFIG.json   # data parallel

A JSON file, optionally followed by flags that override it (or flags alone); the keys are the
fields of the dataclasses in ``retriever_args.py`` plus the HF ``TrainingArguments``. Unknown
keys are an error.
Re-running the same command resumes: LSR scores come from their cache and training from the
last complete checkpoint (the tuning curve and the best weights so far are kept too).

Steps: 1 parse arguments, 2 load models, 3 select questions, index the corpus with stage 1 and
take its candidates, 4 build variants and score them with the LM (LSR, cached), 5 train on the
serving score with ``L_nce + alpha L_align + lam L_invar + gamma L_gen`` (the ``retriever``
LoRA, or with ``train_lora = false`` a head on the frozen LM; the fusion weights in both),
checking the tuning slice from step 0, 6 keep the best checkpoint, 7 save the stage-1 index and
the system directory.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from invar_rag_integrations.invar.settings import InvarSettings
from invar_rag_integrations.models.chat_template import resolve_chat_template
from invar_rag_integrations.models.encoding import QUERY, encode
from invar_rag_integrations.models.lora_targets import resolve_lora_targets

from .retriever_args import LossArguments, ModelArguments, parse_arguments


def train_lora(model_args: ModelArguments, settings: InvarSettings, loss_args: LossArguments,
               train_args: TrainingArguments, lm: Any, tokenizer: Any, coarse_encoder: Any,
               dataset: Any, tuning: tuple) -> tuple[Any, list[dict], dict[str, float]]:
    """Step 5 with the LM adapted: the ``retriever`` LoRA (and head) on the HF ``Trainer``,
    the best tuning checkpoint restored (``tuning``: the tuning questions, their candidates,
    query / passage coarse vectors, cosines and BM25 features). Returns ``(reranker or None off
    the main process, curve, metrics)``."""
    import torch
    from peft import get_peft_model

    from invar_rag_integrations.invar import InvarScorer, Stage2Reranker
    from invar_rag_integrations.invar.projector import Projector
    from invar_rag_integrations.invar.settings import RETRIEVER_ADAPTER
    from invar_rag_integrations.models.adapters import lora_config

    from .retriever_data import collate
    from .retriever_trainer import (
        LossTermsCallback,
        NonFiniteLossError,
        ScorerTrainingModel,
        TuningCurve,
        fused_accuracy,
    )
    from .trainer_utils import TrainedWeightsTrainer, last_complete_checkpoint

    output = Path(train_args.output_dir)
    torch.manual_seed(train_args.seed)
    lm = get_peft_model(lm, lora_config(lm, model_args.lora_r, model_args.lora_alpha,
                                        model_args.lora_dropout, model_args.lora_targets),
                        adapter_name=RETRIEVER_ADAPTER)
    coarse_dim = coarse_encoder.get_embedding_dimension()
    projector = Projector.for_model(lm, coarse_dim, settings) if settings.num_soft_tokens \
        else None
    scorer = InvarScorer(lm, tokenizer, settings.scorer_settings(), RETRIEVER_ADAPTER,
                         projector, precision=model_args.precision)
    reranker = Stage2Reranker(scorer, coarse_encoder, settings)
    model = ScorerTrainingModel(reranker, loss_args.loss(), loss_args.learn_weights,
                                loss_args.micro_batch)
    callbacks: list[Any] = [LossTermsCallback(model)]
    curve = None
    if tuning[0] and train_args.process_index == 0:
        curve = TuningCurve(model, output, loss_args.eval_every,
                            lambda: fused_accuracy(model, *tuning))
        callbacks.append(curve)
    trainer = TrainedWeightsTrainer(model=model, args=train_args, train_dataset=dataset,
                                    data_collator=collate, callbacks=callbacks)
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
        return None, [], {}
    if curve is not None:
        curve.restore_best()
    model.weights.apply_to(settings)
    lm.eval()
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    return reranker, curve.curve if curve is not None else [], metrics


def train_frozen(model_args: ModelArguments, settings: InvarSettings, loss_args: LossArguments,
                 train_args: TrainingArguments, lm: Any, tokenizer: Any, coarse_encoder: Any,
                 dataset: Any, tuning: tuple) -> tuple[Any, list[dict], dict[str, float]]:
    """Step 5 with the LM frozen: the head and the fusion weight on cached scorer outputs,
    the best tuning epoch kept. Returns ``(reranker, curve, metrics)``."""
    from invar_rag_integrations.evaluation.metrics import has_answer
    from invar_rag_integrations.invar import InvarScorer, Stage2Reranker

    from .head_trainer import feature_set, train_head

    if settings.num_soft_tokens or not (settings.head or loss_args.learn_weights):
        raise ValueError("with train_lora = false the head and the fusion weights train (set "
                         "head = true and/or learn_weights = true; num_soft_tokens = 0)")
    started = time.perf_counter()
    scorer = InvarScorer(lm, tokenizer, settings.scorer_settings(), precision=model_args.precision)
    items = [dataset[i] for i in range(len(dataset))]
    show = train_args.process_index == 0
    train = feature_set(scorer, [it["variants"] for it in items], [it["views"] for it in items],
                        [it["cosine"] for it in items],
                        [it["bm25"] for it in items], [it["positives"] for it in items],
                        [it["lm_logprobs"] for it in items],
                        [ex["dataset"] for ex in dataset.examples], show)
    questions, candidates, query_coarse, passage_coarse, cosines, bm25 = tuning
    tune = None
    if questions:
        tune = feature_set(scorer, [[q.question] for q in questions],
                           [[list(cands)] for cands in candidates],
                           [cosine[None] for cosine in cosines],
                           [b[None] for b in bm25],
                           [[has_answer(q.answers, p.full_text()) for p in cands]
                            for q, cands in zip(questions, candidates)], None,
                           [q.dataset for q in questions], show)
    features_seconds = time.perf_counter() - started
    started = time.perf_counter()
    epochs = int(train_args.num_train_epochs)
    model, curve = train_head(
        train, tune, loss_args.loss(gamma=0.0), settings, loss_args.learn_weights, epochs,
        train_args.per_device_train_batch_size, train_args.learning_rate,
        train_args.weight_decay, train_args.seed)
    runtime = time.perf_counter() - started
    model.weights.apply_to(settings)
    scorer.head = model.head
    metrics = {"features_seconds": round(features_seconds, 1), "train_runtime": round(runtime, 2),
               "train_samples_per_second": len(items) * epochs / max(runtime, 1e-9)}
    return Stage2Reranker(scorer, coarse_encoder, settings), curve, metrics


def main(argv: Sequence[str] | None = None) -> Path:
    """Run all steps; returns the system directory."""
    import numpy as np
    import torch

    from invar_rag_integrations.evaluation.chunking import chunked_corpus
    from invar_rag_integrations.invar.artifacts import save_retriever
    from invar_rag_integrations.invar.reranker import Stage2Reranker
    from invar_rag_integrations.invar.scorer import InvarScorer
    from invar_rag_integrations.invar.two_stage import INDEX_DIR, TwoStageRetriever
    from invar_rag_integrations.models import load_base_lm, load_coarse_encoder
    from invar_rag_integrations.paths import cache_dir

    from .calibrate import calibrate_on_tuning
    from .lsr import LSRScorer, lsr_cache_file
    from .retriever_data import (
        RetrieverDataset,
        bm25_feature,
        build_examples,
        candidate_set,
        lm_paraphrases,
        make_variants,
        select_questions,
    )

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
    # the manifest keeps the chat form rendered ("model": the tokenizer's own)
    settings.chat_template = model_args.chat_template = resolve_chat_template(
        model_args.chat_template, tokenizer)
    if model_args.train_lora:  # a target the model lacks fails now, before any preparation
        model_args.lora_targets = resolve_lora_targets(lm, model_args.lora_targets)
    coarse_encoder = load_coarse_encoder(model_args.coarse_encoder)

    with train_args.main_process_first(desc="data preparation"):
        # 3. questions and stage 1's candidates (gold passages added where stage 1 missed them)
        passages = chunked_corpus(data.chunking, data.data_dir)
        by_id = {p.id: p for p in passages}
        questions, tune = select_questions(data.train_datasets, data.questions_per_dataset,
                                           data.tune_questions_per_dataset, data.question_seed,
                                           data.data_dir)
        # the zero-shot two-stage retriever: stage 1 here, and its index is saved in step 7
        retriever = TwoStageRetriever(Stage2Reranker(InvarScorer(
            lm, tokenizer, settings.scorer_settings(), precision=model_args.precision),
            coarse_encoder, settings), "", output, show_progress=train_args.process_index == 0)
        retriever.index(passages)
        depth = min(max(settings.candidates, data.train_candidates), len(passages))
        ranked = [r.ids for r in retriever.stage1.search([q.question for q in questions + tune],
                                                         depth)]
        candidates = [candidate_set(q, ids, by_id, data.train_candidates)
                      for q, ids in zip(questions, ranked)]
        tune_candidates = [[by_id[i] for i in ids[: settings.candidates]]
                           for ids in ranked[len(questions):]]

        # 4. variants and LSR scores (cached, resumable)
        paraphrases: list[list[str]] = [[] for _ in questions]
        if data.lm_paraphrases:
            from invar_rag_integrations.generation.hf import HFGenerator

            torch.manual_seed(data.question_seed)
            paraphrases = lm_paraphrases([q.question for q in questions],
                                         HFGenerator(lm, tokenizer), data.lm_paraphrases)
            width = min(len(p) for p in paraphrases)  # every example needs the same V
            paraphrases = [p[:width] for p in paraphrases]
        variants = [make_variants(q.question, data.rewrite_kinds, data.num_rewrites,
                                  data.context_words, data.question_seed, para)
                    for q, para in zip(questions, paraphrases)]
        cache = lsr_cache_file(data.lsr_cache_dir or cache_dir() / "lsr",
                               lm.invar_source.identity)
        engine = None
        if data.lsr_backend == "vllm":  # the scale path: vLLM's prompt logprobs on a GPU
            from invar_rag_integrations.generation.vllm_backend import VLLMGenerator

            engine = VLLMGenerator(lm.invar_source.path, name=lm.invar_source.name)
        lsr = LSRScorer(lm, tokenizer, cache, data.lsr_batch_size,
                        show_progress=train_args.process_index == 0, engine=engine)
        prep_started = time.perf_counter()
        examples = build_examples(questions, candidates, variants, by_id, lsr)
        prep_seconds = time.perf_counter() - prep_started
        if engine is not None:
            engine.shutdown()
        if not examples:
            raise ValueError("no training examples: every question had an empty candidate set")
        texts = sorted({v for ex in examples for v in ex["variants"]})
        query_coarse = dict(zip(texts, encode(coarse_encoder, texts, QUERY)))
        passage_coarse = dict(zip(retriever.passage_ids,
                                  retriever.passage_coarse(retriever.passage_ids)))
        for ex in examples:
            ex["bm25"] = [bm25_feature(retriever, [query], [ex["candidate_ids"]])[0]
                          for query in ex["variants"]]
            ex["cosine"] = retriever.passage_cosines(
                np.stack([query_coarse[v] for v in ex["variants"]]),
                [ex["candidate_ids"]] * len(ex["variants"]))
    dataset = RetrieverDataset(examples, query_coarse, passage_coarse, by_id)
    tune_query_coarse = encode(coarse_encoder, [q.question for q in tune], QUERY)
    tune_passage_coarse = [np.stack([passage_coarse[p.id] for p in cands])
                           for cands in tune_candidates]
    tune_ids = [[p.id for p in cands] for cands in tune_candidates]
    tune_bm25 = bm25_feature(retriever, [q.question for q in tune], tune_ids)
    tune_cosines = retriever.passage_cosines(tune_query_coarse, tune_ids)

    # 5. train on the serving score: the LoRA (and the head, if any) through the LM, or, with
    #    the LM frozen, the head on cached scorer outputs; the fusion weight in both
    reranker, curve, result = (train_lora if model_args.train_lora else train_frozen)(
        model_args, settings, loss_args, train_args, lm, tokenizer, coarse_encoder, dataset,
        (tune, tune_candidates, tune_query_coarse, tune_passage_coarse, tune_cosines, tune_bm25))
    if reranker is None:  # not the main process
        return output

    # 6. the system directory: the best checkpoint on the tuning slice (step 0 included)
    best = max(curve, key=lambda row: (row["mean"], -row["step"])) if curve else None
    all_args = {"command": shlex.join(["invar-rag", "train-retriever", *argv]),
                "model": asdict(model_args), "data": asdict(data), "loss": asdict(loss_args),
                "training": train_args.to_dict()}
    metrics = {"train_examples": len(examples),
               "train_pairs": int(sum(len(ex["variants"]) * len(ex["candidate_ids"])
                                      for ex in examples)),
               "lsr_seconds": round(prep_seconds, 1), "lsr_computed": lsr.computed,
               "tuning_curve": curve, "best_step": best["step"] if best else None, **result}

    # 7. its relevance probabilities (fitted on the tuning questions), index, system directory
    retriever.reranker = reranker
    metrics["calibration"] = calibrate_on_tuning(retriever, tune)
    if loss_args.index_after_training:
        retriever.save(output / INDEX_DIR, passages)
    metrics["total_seconds"] = round(time.perf_counter() - started, 1)
    save_retriever(reranker, output, all_args, metrics)
    print(f"saved the retriever to {output} (best tuning step {metrics['best_step']})",
          file=sys.stderr)
    return output


if __name__ == "__main__":
    main()
