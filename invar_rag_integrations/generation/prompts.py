"""The one prompt template used by training, evaluation and serving (plain, or in the base
model's chat form: ``models/chat_template.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..data import Passage
from ..models.chat_template import FROM_MODEL, ChatForm

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
class FittedPrompt:
    """A prompt cut to a token budget, saying what had to be cut.

    Attributes:
        text: The prompt.
        passage_words: Words kept per passage when passages were shortened (0: all dropped).
        question_words: Words kept of the question when it was shortened.
    """

    text: str
    passage_words: int | None = None
    question_words: int | None = None

    @property
    def truncated(self) -> bool:
        return self.passage_words is not None or self.question_words is not None

    def describe(self) -> str:
        """What was cut, in words ("" when nothing was)."""
        cuts = []
        if self.passage_words == 0:
            cuts.append("passages dropped")
        elif self.passage_words is not None:
            cuts.append(f"passages cut to {self.passage_words} words")
        if self.question_words is not None:
            cuts.append(f"question cut to its last {self.question_words} words")
        return "; ".join(cuts)


def _largest_fitting(high: int, fits: Callable[[int], bool]) -> int:
    """The largest ``n`` in ``1..high`` with ``fits(n)`` (monotone), or 0 when none fits."""
    low = 0
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


@dataclass(frozen=True)
class PromptTemplate:
    """Instruction + n-shot examples + top-k passages + question, as plain text or as the
    user's turn of a chat form (the answer is then the assistant's turn).

    Args:
        instruction: First line of the prompt.
        n_shots: How many of the examples to show (0 for none).
        max_passage_words: Passages are cut to this many words (``None``: no cut).
        examples: ``(question, answer)`` demonstrations.
        chat_template: A chat form with ``{message}`` and ``{answer}``
            (``render_chat_template(tokenizer)`` gives the model's own), or ``None``: plain.
    """

    instruction: str = DEFAULT_INSTRUCTION
    n_shots: int = 3
    max_passage_words: int | None = 120
    examples: tuple[tuple[str, str], ...] = DEFAULT_EXAMPLES
    chat_template: str | None = None

    def __post_init__(self) -> None:
        if self.chat_template == FROM_MODEL:
            raise ValueError("the prompt template needs the chat form itself: "
                             "resolve_chat_template('model', tokenizer) renders the model's")
        if self.chat_template is not None:
            ChatForm.parse(self.chat_template)
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
        return self._layout(question.strip(),
                            [self.format_passage(i, p) for i, p in enumerate(passages, start=1)])

    def with_fields(self, context_field: str = "context_str",
                    question_field: str = "query_str") -> str:
        """The prompt as a ``str.format`` template for LlamaIndex / LangChain: ``{context_field}``
        stands for the passage lines and ``{question_field}`` for the question; any other
        braces are escaped."""
        def escape(text: str) -> str:
            return text.replace("{", "{{").replace("}", "}}")

        return self._layout(f"{{{question_field}}}", [f"{{{context_field}}}"], escape)

    def _layout(self, question: str, passage_lines: Sequence[str],
                escape: Callable[[str], str] = str) -> str:
        parts = [escape(self.instruction), ""]
        for q, a in self.examples[: self.n_shots]:
            parts += [f"Question: {escape(q)}", f"Answer: {escape(a)}", ""]
        if passage_lines:
            parts += ["Passages:", *passage_lines, ""]
        parts += [f"Question: {question}", "Answer:"]
        form = self.form
        if form is None:
            return "\n".join(parts)
        return escape(form.before) + "\n".join(parts) + escape(form.between)

    @property
    def form(self) -> ChatForm | None:
        """The chat form (``None``: the plain prompt)."""
        return ChatForm.parse(self.chat_template) if self.chat_template else None

    def continuation(self, answer: str) -> str:
        """``answer`` as it follows the prompt: after a space in the plain prompt, as the
        assistant's turn in a chat form."""
        return f"{'' if self.form else ' '}{answer.strip()}"

    def target(self, answer: str) -> str:
        """What the generator learns to write: the answer and the end of its line, or of its
        turn in a chat form."""
        form = self.form
        return self.continuation(answer) + (form.after if form else "\n")

    @property
    def turn_end(self) -> tuple[str, ...]:
        """The text that ends the assistant's turn in a chat form (none when plain)."""
        form = self.form
        return (form.end,) if form is not None and form.end else ()

    @property
    def stop(self) -> tuple[str, ...]:
        """Where an answer stops: the end of its line, or of the assistant's turn."""
        return ("\n", *self.turn_end)

    def fit(self, question: str, passages: Sequence[Passage], count_tokens: Callable[[str], int],
            max_tokens: int) -> FittedPrompt:
        """Render within ``max_tokens``: passages are shortened (then dropped) first, then the
        question loses its first words.

        Raises:
            ValueError: Even the instruction and examples alone exceed ``max_tokens``.
        """
        text = self.render(question, passages)
        if count_tokens(text) <= max_tokens:
            return FittedPrompt(text)
        if passages:
            longest = max(len(p.text.split()) for p in passages)
            cap = min(longest, self.max_passage_words or longest)
            words = _largest_fitting(cap - 1, lambda n: count_tokens(
                replace(self, max_passage_words=n).render(question, passages)) <= max_tokens)
            if words:
                return FittedPrompt(replace(self, max_passage_words=words).render(question,
                                                                                  passages), words)
        words = question.split()
        kept = _largest_fitting(len(words), lambda n: count_tokens(
            self.render(" ".join(words[-n:]))) <= max_tokens)
        if not kept:
            raise ValueError(f"the prompt's instruction and examples alone exceed {max_tokens} "
                             "tokens; use fewer examples (n_shots) or a larger budget")
        return FittedPrompt(self.render(" ".join(words[-kept:])), 0 if passages else None,
                            kept if kept < len(words) else None)

    def to_dict(self) -> dict[str, Any]:
        """Settings for a manifest (:meth:`from_dict` restores them)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> PromptTemplate:
        settings = dict(settings)
        if "examples" in settings:
            settings["examples"] = tuple((str(q), str(a)) for q, a in settings["examples"])
        return cls(**settings)

    @staticmethod
    def clean_answer(generated: str) -> str:
        """The answer from generated text: first line, stripped."""
        return generated.strip().split("\n", 1)[0].strip()
