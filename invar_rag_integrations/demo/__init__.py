"""The project's own demo corpus (40 passages, 10 questions), written for this project, and
the small trained system the package ships (:data:`SHIPPED_SYSTEM`)."""

from __future__ import annotations

from pathlib import Path

from ..data import Passage, Question, load_passages, read_jsonl

DEMO_DIR = Path(__file__).resolve().parent
SHIPPED_SYSTEM = DEMO_DIR / "system"
"""A system directory trained by the project's demo configs (SmolLM2-135M-Instruct)."""


def demo_passages() -> list[Passage]:
    """The demo corpus: short passages on planets, inventions, geography and computing."""
    return load_passages(DEMO_DIR / "corpus.jsonl")


def demo_questions() -> list[Question]:
    """Ten demo questions with their answers and gold passage ids."""
    return [Question(r["id"], r["question"], tuple(r["answers"]), "demo",
                     tuple(r["gold_passage_ids"]))
            for _, r in read_jsonl(DEMO_DIR / "questions.jsonl")]
