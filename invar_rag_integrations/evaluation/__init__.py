"""Evaluation: ODQA/HF loaders, metrics (Acc@k, EM, F1), retrieval evaluation, results files."""

from __future__ import annotations

from .datasets import freebaseqa, hf_questions, odqa_corpus, odqa_questions, select_split
from .metrics import exact_match, f1_score, has_answer
from .retrieval_eval import evaluate_retrieval

__all__ = ["evaluate_retrieval", "exact_match", "f1_score", "freebaseqa", "has_answer",
           "hf_questions", "odqa_corpus", "odqa_questions", "select_split"]
