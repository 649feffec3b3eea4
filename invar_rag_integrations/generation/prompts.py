"""The one prompt template used by training, evaluation and serving."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..data import Passage

DEFAULT_INSTRUCTION = (
    "Answer the question with a short phrase, taken from the passages when they contain it."
)

# Short general-knowledge demonstrations of the answer format (written for this project).
DEFAULT_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("What is the chemical symbol for gold?", "Au"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("In which year did the Berlin Wall fall?", "1989"),
    ("What is the capital city of Canada?", "Ottawa"),
    ("Which gas do plants absorb from the air for photosynthesis?", "carbon dioxide"),
    ("How many legs does a spider have?", "eight"),
    ("Who wrote the novel Pride and Prejudice?", "Jane Austen"),
    ("What is the largest ocean on Earth?", "the Pacific Ocean"),
)


@dataclass(frozen=True)
class PromptTemplate:
    """Instruction + n-shot examples + top-k passages + question, rendered as plain text.

    Args:
        instruction: First line of the prompt.
        n_shots: How many of the examples to show (0 for none).
        max_passage_words: Passages are cut to this many words (``None``: no cut).
        examples: ``(question, answer)`` demonstrations.
    """

    instruction: str = DEFAULT_INSTRUCTION
    n_shots: int = 3
    max_passage_words: int | None = 120
    examples: tuple[tuple[str, str], ...] = DEFAULT_EXAMPLES

    def __post_init__(self) -> None:
        if self.n_shots < 0 or self.n_shots > len(self.examples):
            raise ValueError(f"n_shots must be in 0..{len(self.examples)}, got {self.n_shots}")
        if self.max_passage_words is not None and self.max_passage_words <= 0:
            raise ValueError(f"max_passage_words must be positive, got {self.max_passage_words}")

    def format_passage(self, index: int, passage: Passage) -> str:
        words = passage.text.split()
        if self.max_passage_words is not None and len(words) > self.max_passage_words:
            words = words[: self.max_passage_words] + ["..."]
        title = f" ({passage.title})" if passage.title else ""
        return f"[{index}]{title} {' '.join(words)}"

    def render(self, question: str, passages: Sequence[Passage] = ()) -> str:
        """The prompt for ``question``; the answer is generated after the final ``Answer:``."""
        if not question.strip():
            raise ValueError("question is empty or whitespace")
        parts = [self.instruction, ""]
        for q, a in self.examples[: self.n_shots]:
            parts += [f"Question: {q}", f"Answer: {a}", ""]
        if passages:
            parts += ["Passages:"]
            parts += [self.format_passage(i, p) for i, p in enumerate(passages, start=1)]
            parts += [""]
        parts += [f"Question: {question.strip()}", "Answer:"]
        return "\n".join(parts)

    @staticmethod
    def clean_answer(generated: str) -> str:
        """The answer from generated text: first line, stripped."""
        return generated.strip().split("\n", 1)[0].strip()
