"""Prompts in the model's chat form: the one place a plain prompt becomes a chat turn.

A chat form is stored as text with two markers, ``{message}`` (the user's turn: the plain
prompt) and ``{answer}`` (the assistant's turn: the question the scorer reads, the answer the
generator writes), rendered once from the tokenizer's own chat template
(:func:`render_chat_template`) and kept in the manifest, so a system reads and writes exactly
the prompts it was trained with. No form (``None``) is the plain prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MESSAGE, ANSWER = "{message}", "{answer}"
FROM_MODEL = "model"  # a setting's value meaning "render the base model's own template"
_MESSAGE_MARK, _ANSWER_MARK = "INVARMESSAGEMARK", "INVARANSWERMARK"


@dataclass(frozen=True)
class ChatForm:
    """A chat form split at its markers: ``before {message} between {answer} after``."""

    before: str
    between: str
    after: str

    @classmethod
    def parse(cls, text: str) -> ChatForm:
        """The form of ``text``.

        Raises:
            ValueError: ``text`` does not hold ``{message}`` then ``{answer}``, once each.
        """
        if text.count(MESSAGE) != 1 or text.count(ANSWER) != 1 or \
                text.index(MESSAGE) > text.index(ANSWER):
            raise ValueError(f"a chat template must hold {MESSAGE} and then {ANSWER}, once each "
                             f"(or be {FROM_MODEL!r}: the base model's own), got {text!r}")
        before, rest = text.split(MESSAGE)
        between, after = rest.split(ANSWER)
        return cls(before, between, after)

    def prompt(self, message: str) -> str:
        """The prompt that asks for the assistant's turn after ``message``."""
        return f"{self.before}{message}{self.between}"

    @property
    def end(self) -> str:
        """The text that ends the assistant's turn (stripped), or "" when there is none."""
        return self.after.strip()


def render_chat_template(tokenizer: Any) -> str:
    """The tokenizer's chat template for one user turn and the assistant's reply, as a chat
    form with the ``{message}`` and ``{answer}`` markers. A leading BOS is left out when the
    tokenizer adds it itself (or every prompt would start with two).

    Raises:
        ValueError: The tokenizer has no chat template, or its rendering does not keep the
            turns' text.
    """
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer of {name!r} has no chat template: leave chat_template "
                         "unset (the plain prompt) or give the form as text with {message} and "
                         "{answer}")
    turns = [{"role": "user", "content": _MESSAGE_MARK},
             {"role": "assistant", "content": _ANSWER_MARK}]
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    if text.count(_MESSAGE_MARK) != 1 or text.count(_ANSWER_MARK) != 1:
        raise ValueError(f"the chat template of {name!r} does not keep a turn's text as it is; "
                         "give the form as text with {message} and {answer}")
    if adds_bos(tokenizer) and text.startswith(tokenizer.bos_token):
        text = text[len(tokenizer.bos_token):]
    return text.replace(_MESSAGE_MARK, MESSAGE).replace(_ANSWER_MARK, ANSWER)


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS before a text itself (Llama, Mistral, Gemma)."""
    probe = tokenizer("x")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(probe) and \
        probe[0] == tokenizer.bos_token_id


def resolve_chat_template(value: str | None, tokenizer: Any) -> str | None:
    """A chat-template setting made concrete: ``None`` (the plain prompt) and a form given as
    text stay as they are (the text is checked), ``"model"`` becomes the tokenizer's own
    (:func:`render_chat_template`)."""
    check_chat_template(value)
    return render_chat_template(tokenizer) if value == FROM_MODEL else value


def check_chat_template(value: str | None) -> None:
    """Fail on a chat-template setting that is neither unset, ``"model"`` nor a form."""
    if value is not None and value != FROM_MODEL:
        ChatForm.parse(value)
