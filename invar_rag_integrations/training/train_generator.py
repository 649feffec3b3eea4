"""Train the generator adapter (generation stage of Invar-RAG, DESIGN.md §2).

Usage::

    python -m invar_rag_integrations.training.train_generator \
        training/configs/generator_smollm2_cpu.json
    invar-rag train-generator training/configs/generator_smollm2_cpu.json [--flag value ...]

The retriever is frozen: each training question is retrieved once (results cached under
``<output_dir>/search_cache``), put in the prompt template the system answers with, and the
``generator`` LoRA adapter is trained on the same base model with the loss on the answer tokens
only. Re-running the same command resumes from the last complete checkpoint.

Steps: 1 parse arguments, 2 load the retriever and base model, 3 select questions,
4 retrieve top-k (cached), 5 build prompts and labels, 6 train, 7 save the adapter into the
system directory.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from invar_rag_integrations.generation.artifacts import GeneratorSettings
from invar_rag_integrations.models.chat_template import check_chat_template

from .trainer_utils import parse_config


@dataclass
class SystemArguments:
    """Where the generator goes and which frozen retriever feeds it."""

    system_dir: str = field(
        default="", metadata={"help": "system directory; the generator is saved into it, and "
                                      "its Invar retriever is the default retriever"})
    retriever: str = field(
        default="", metadata={"help": "'' = the system's Invar retriever; or bm25, minilm, rrf, "
                                      "another system directory or a saved index folder"})
    base_model: str = field(
        default="smollm2", metadata={"help": "used when the system has no retriever yet"})


@dataclass
class GeneratorArguments(GeneratorSettings):
    """``GeneratorSettings`` plus the prompt template's settings."""

    n_shots: int = 3
    max_passage_words: int = 100
    chat_template: str | None = field(default=None, metadata={
        "help": "the prompt in the base model's chat form: model (its tokenizer's template), or "
                "a form with {message} and {answer}; unset: the plain prompt"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_chat_template(self.chat_template)


@dataclass
class GeneratorDataArguments:
    """Training questions (the ODQA ``train`` split, never the validation carve-out)."""

    data_dir: str | None = field(default=None, metadata={"help": "folder with odqa/ and train/"})
    train_datasets: list[str] = field(default_factory=lambda: [
        "nq", "popqa_longtail", "triviaqa_dev", "squad", "freebaseqa"])
    questions_per_dataset: list[int] = field(default_factory=lambda: [120, 120, 120, 60, 60])


def parse_arguments(argv: Sequence[str]) -> tuple[SystemArguments, GeneratorArguments,
                                                  GeneratorDataArguments, TrainingArguments]:
    """Step 1: a JSON config and/or flags (see :func:`.trainer_utils.parse_config`)."""
    system, generator, data, train = parse_config(
        (SystemArguments, GeneratorArguments, GeneratorDataArguments, TrainingArguments), argv)
    if not system.system_dir:
        raise ValueError("system_dir is required (the system directory to add the generator to)")
    return system, generator, data, train


def load_retriever(system: SystemArguments, passages: list) -> tuple[Any, Any, Any]:
    """Step 2: ``(retriever, lm, tokenizer)``, the retriever indexed over ``passages``.

    The system's Invar retriever shares its base model with the generator; another retriever
    comes with a separately loaded base model.
    """
    from invar_rag_integrations.invar import TwoStageRetriever
    from invar_rag_integrations.invar.two_stage import INDEX_DIR
    from invar_rag_integrations.models import load_base_lm
    from invar_rag_integrations.system import is_system_dir, read_manifest

    from .catalog import make_retriever

    folder = Path(system.system_dir)
    if not system.retriever:
        if not (is_system_dir(folder) and "retriever" in read_manifest(folder)):
            raise ValueError(f"{folder} holds no trained retriever; train one first "
                             "(invar-rag train-retriever) or name a retriever")
        retriever = TwoStageRetriever.from_pretrained(folder)
        lm, tokenizer = retriever.scorer.lm, retriever.scorer.tokenizer
    else:
        retriever = make_retriever(system.retriever)
        base = read_manifest(folder)["base_model"]["name"] if is_system_dir(folder) \
            else system.base_model
        lm, tokenizer = load_base_lm(base)
    if retriever.passage_ids != [p.id for p in passages]:
        retriever.index(passages)
        if isinstance(retriever, TwoStageRetriever) and not system.retriever:
            retriever.save(folder / INDEX_DIR, passages)
    return retriever, lm, tokenizer


def claim_output_dir(output: Path, system_dir: str, retriever: str) -> None:
    """Record which system and retriever ``output`` trains for, so a later run never resumes
    from another system's checkpoints.

    Raises:
        ValueError: ``output`` already holds a run for another system or retriever.
    """
    import json

    owner = {"system_dir": str(Path(system_dir).resolve()), "retriever": retriever}
    file = output / "generator_run.json"
    if file.is_file():
        found = json.loads(file.read_text(encoding="utf-8"))
        if found != owner:
            raise ValueError(f"{output} holds a generator run for {found['system_dir']} "
                             f"(retriever {found['retriever'][:40]}); choose another output_dir")
        return
    output.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(owner), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> Path:
    """Run all steps; returns the system directory."""
    import torch

    from invar_rag_integrations.evaluation.datasets import odqa_corpus
    from invar_rag_integrations.generation import PromptTemplate
    from invar_rag_integrations.generation.artifacts import add_generator_adapter, save_generator
    from invar_rag_integrations.models.chat_template import resolve_chat_template
    from invar_rag_integrations.models.lora_targets import resolve_lora_targets
    from invar_rag_integrations.retrieval.search_cache import cached_search

    from .generator_data import IGNORE_INDEX, build_examples, make_collate
    from .retriever_data import select_questions
    from .trainer_utils import TrainedWeightsTrainer, last_complete_checkpoint

    # 1. arguments
    argv = sys.argv[1:] if argv is None else list(argv)
    system, gen, data, train_args = parse_arguments(argv)
    settings = GeneratorSettings(**{k: getattr(gen, k)
                                    for k in GeneratorSettings.__dataclass_fields__})
    train_args.remove_unused_columns = False
    train_args.label_names = ["labels"]
    output = Path(train_args.output_dir)
    started = time.perf_counter()

    # 2. the frozen retriever and the base model
    passages = odqa_corpus(data.data_dir)
    by_id = {p.id: p for p in passages}
    retriever, lm, tokenizer = load_retriever(system, passages)
    claim_output_dir(output, system.system_dir, retriever.identity())
    # a target the model lacks fails now, before any retrieval
    settings.lora_targets = resolve_lora_targets(lm, settings.lora_targets)
    template = PromptTemplate(n_shots=gen.n_shots, max_passage_words=gen.max_passage_words,
                              chat_template=resolve_chat_template(gen.chat_template, tokenizer))

    # 3. questions: the train split of each dataset (the validation carve-out is never used)
    questions, _ = select_questions(data.train_datasets, data.questions_per_dataset, 0,
                                    train_args.seed, data.data_dir, split="train")
    if not questions:
        raise ValueError("no training questions: check train_datasets and questions_per_dataset")

    # 4. top-k for each question, once (cached)
    results = cached_search(retriever, [q.question for q in questions], settings.k,
                            output / "search_cache")

    # 5. prompts within the budget, labels on the answer tokens only
    budget = settings.prompt_budget(lm.config.max_position_embeddings)
    examples, cut = build_examples(questions, [r.ids for r in results], by_id, template,
                                   tokenizer, budget)
    if cut:
        print(f"{cut} of {len(examples)} prompts were cut to {budget} tokens", file=sys.stderr)

    # 6. train LoRA(generator) on the same base model; the retriever adapter stays frozen
    torch.manual_seed(train_args.seed)
    lm = add_generator_adapter(lm, settings)
    lm.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    trainer = TrainedWeightsTrainer(model=lm, args=train_args, train_dataset=examples,
                                    data_collator=make_collate(pad_id))
    resume = last_complete_checkpoint(output)
    if resume:
        print(f"resuming from {resume}", file=sys.stderr)
    result = trainer.train(resume_from_checkpoint=resume)
    if not trainer.is_world_process_zero():
        return Path(system.system_dir)

    # 7. the generator adapter and its manifest entry
    all_args = {"command": shlex.join(["invar-rag", "train-generator", *argv]),
                "system": asdict(system), "generator": asdict(gen), "data": asdict(data),
                "training": train_args.to_dict()}
    metrics = {"train_examples": len(examples), "prompts_cut": cut,
               "answer_tokens": sum(sum(t != IGNORE_INDEX for t in ex["labels"])
                                    for ex in examples),
               "prompt_tokens_mean": round(sum(len(ex["input_ids"]) for ex in examples)
                                           / len(examples), 1),
               **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
               "total_seconds": round(time.perf_counter() - started, 1)}
    lm.eval()
    save_generator(lm, system.system_dir, settings, template, all_args, metrics)
    print(f"saved the generator to {system.system_dir}", file=sys.stderr)
    return Path(system.system_dir)


if __name__ == "__main__":
    main()
