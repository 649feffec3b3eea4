"""Whether a text holds an answer: DPR's ``has_answer`` token matching (what Acc@k counts and
what the RAG's abstention checks in the passages it shows)."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Sequence

ARTICLES = re.compile(r"\b(a|an|the)\b")


def strip_punctuation(text: str, replacement: str) -> str:
    """``text`` with every punctuation character replaced by ``replacement``."""
    return "".join(
        replacement if unicodedata.category(ch).startswith("P") or ch in string.punctuation else ch
        for ch in text
    )


def match_tokens(text: str) -> list[str]:
    """Tokens for answer matching in passages: Unicode NFD, lower case, punctuation replaced by
    spaces, articles a/an/the removed, split on white space."""
    text = strip_punctuation(unicodedata.normalize("NFD", text).lower(), " ")
    return ARTICLES.sub(" ", text).split()


def holds_run(tokens: Sequence[str], target: Sequence[str]) -> bool:
    """Whether ``target`` (non-empty) occurs contiguously in ``tokens``."""
    n, first = len(target), target[0]
    return any(token == first and tokens[start : start + n] == target
               for start, token in enumerate(tokens[: len(tokens) - n + 1]))


def has_answer(answers: Iterable[str], text: str) -> bool:
    """Whether the token sequence of any answer occurs contiguously in ``text``'s tokens."""
    tokens = match_tokens(text)
    return any(target and holds_run(tokens, target) for target in map(match_tokens, answers))
