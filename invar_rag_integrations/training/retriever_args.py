"""The retriever driver's arguments (``train_retriever.py``): the base LM and its LoRA, the data,
the loss; with the HF ``TrainingArguments``, what a config file or the command line sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import TrainingArguments

from invar_rag_integrations.evaluation.chunking import CHUNKING_NAMES
from invar_rag_integrations.invar.settings import InvarSettings
from invar_rag_integrations.models.adapters import check_lora
from invar_rag_integrations.models.lora_targets import AUTO

from .query_variants import REWRITE_KINDS
from .trainer_utils import parse_config


@dataclass
class ModelArguments(InvarSettings):
    """The base LM, coarse encoder and scorer precision, the ``retriever`` LoRA, and every
    setting of ``InvarSettings`` (their values here are the starting point of training)."""

    base_model: str = "smollm2"
    coarse_encoder: str = "minilm"
    precision: str = field(default="auto", metadata={"help": "auto, float32 or bfloat16"})
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: [AUTO],
        metadata={"help": "the retriever adapter's layers (auto: the base model's attention "
                          "projections)"})
    train_lora: bool = field(
        default=True, metadata={"help": "adapt the LM; false: freeze it and train the head and "
                                        "fusion weight on cached scorer outputs"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_lora(self.lora_r, self.lora_targets)

    def settings(self) -> InvarSettings:
        names = set(InvarSettings.__dataclass_fields__)
        return InvarSettings(**{k: v for k, v in asdict(self).items() if k in names})


@dataclass
class DataArguments:
    """Training questions, variants and the LSR step."""

    data_dir: str | None = field(default=None, metadata={"help": "folder with odqa/ and train/"})
    chunking: str = field(default="passages", metadata={
        "help": "the corpus as it is (passages) or its articles cut into long nodes by a "
                "framework splitter (llama-256/512/1024, lc-1000/4000): candidates and LSR "
                "scores are read over the nodes' windows, as serving reads them"})
    train_datasets: list[str] = field(
        default_factory=lambda: ["nq", "squad", "popqa_longtail", "freebaseqa"])
    questions_per_dataset: list[int] = field(
        default_factory=lambda: [100, 100, 100, 50], metadata={"help": "-1 = all"})
    tune_questions_per_dataset: int = field(
        default=40, metadata={"help": "tune-split questions per dataset for the curve"})
    train_candidates: int = field(
        default=6, metadata={"help": "stage-1 candidates per training question (with gold); "
                                     "the tuning curve reads the served depth, candidates"})
    rewrite_kinds: list[str] = field(default_factory=lambda: list(REWRITE_KINDS))
    num_rewrites: int = 1
    lm_paraphrases: int = field(default=0, metadata={"help": "LM paraphrases per question"})
    context_words: list[int] = field(
        default_factory=list,
        metadata={"help": "context resizings: answer-centred windows of this many words"})
    question_seed: int = field(
        default=0, metadata={"help": "seed of the question sample and the rewrites (``seed`` "
                                     "is training's: a second seed re-trains on the same data)"})
    lsr_batch_size: int = 16
    lsr_backend: str = field(default="hf", metadata={
        "help": "hf, or vllm: LSR scores from a vLLM engine's prompt logprobs (equal within "
                "float tolerance; for GPUs: on this CPU the HF bf16 forward was faster)",
        "choices": ["hf", "vllm"]})
    lsr_cache_dir: str | None = field(
        default=None, metadata={"help": "default: $INVAR_RAG_CACHE/lsr (shared by runs: scores "
                                        "are keyed by prompt and base model)"})

    def __post_init__(self) -> None:
        if self.chunking not in CHUNKING_NAMES:
            raise ValueError(f"chunking must be one of {CHUNKING_NAMES}, got {self.chunking!r}")


@dataclass
class LossArguments:
    """``L = L_nce + alpha * L_align + lam * L_invar + gamma * L_gen``, the tuning curve and the
    final indexing."""

    alpha: float = 1.0
    lam: float = 1.0
    gamma: float = 0.0
    lsr_beta: float = 1.0
    kappa: float = 1.0
    mu: float = 0.1
    use_nce: bool = True
    use_align: bool = True
    use_invar: bool = True
    learn_weights: bool = field(
        default=True, metadata={"help": "train the fusion weights cos_weight and bm25_weight"})
    micro_batch: int = field(default=16, metadata={"help": "pairs per forward pass"})
    eval_every: int = field(default=25, metadata={"help": "steps between tuning evaluations"})
    index_after_training: bool = field(
        default=True, metadata={"help": "index the ODQA corpus with stage 1 (step 7)"})

    def loss(self, gamma: float | None = None) -> Any:
        """The weighted loss (``gamma`` overrides ``L_gen``'s weight)."""
        from .losses import InvarRetrievalLoss

        return InvarRetrievalLoss(self.alpha, self.lam, self.lsr_beta, self.kappa, self.mu,
                                  self.use_nce, self.use_align, self.use_invar,
                                  self.gamma if gamma is None else gamma)


def parse_arguments(argv: Sequence[str]) -> tuple[ModelArguments, DataArguments, LossArguments,
                                                  TrainingArguments]:
    """Step 1: a JSON config and/or flags (see :func:`.trainer_utils.parse_config`)."""
    return parse_config((ModelArguments, DataArguments, LossArguments, TrainingArguments), argv)
