"""Seeded rule-based query rewrites: the query side of Invar-RAG's variants (DESIGN.md §2).

Each kind keeps the question's meaning and changes its surface, so a robust retriever should
return the same passages. Rewrites are deterministic in ``(seed, kind, question)``.
"""

from __future__ import annotations

import hashlib
import random
import re

REWRITE_KINDS = ("prefix", "wh_end", "drop_articles", "case_punct", "typo")

_PREFIXES = ("tell me ", "can you tell me ", "i would like to know ", "quick question: ",
             "please answer: ")
_WH = re.compile(r"^\s*(how many|how much|how long|how old|who|whom|whose|what|when|where|which"
                 r"|why|how)\b\s*", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b\s*", re.IGNORECASE)


def _rng(question: str, kind: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}|{kind}|{question}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _squash(text: str) -> str:
    return " ".join(text.split())


def _drop_articles(text: str) -> str:
    return _squash(_ARTICLES.sub("", text))


def _typo(question: str, rng: random.Random) -> str:
    words = question.split()
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not candidates:
        return question
    i = rng.choice(candidates)
    word = words[i]
    j = rng.randrange(1, len(word) - 2)  # keep the first and last letters in place
    words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
    return " ".join(words)


def rewrite(question: str, kind: str, seed: int = 0) -> str:
    """Rewrite ``question`` with one rule.

    Kinds: ``prefix`` (a conversational prefix such as "tell me "), ``wh_end`` (the question
    word moved to the end and articles dropped), ``drop_articles``, ``case_punct`` (lower case,
    question mark removed or added) and ``typo`` (two inner letters of one word swapped).

    Raises:
        ValueError: Unknown kind or empty question.
    """
    if kind not in REWRITE_KINDS:
        raise ValueError(f"unknown rewrite kind {kind!r}; known: {', '.join(REWRITE_KINDS)}")
    if not question.strip():
        raise ValueError("question is empty or whitespace")
    rng = _rng(question, kind, seed)
    text = _squash(question)
    if kind == "prefix":
        result = rng.choice(_PREFIXES) + text[0].lower() + text[1:]
    elif kind == "wh_end":
        match = _WH.match(text)
        body = text[match.end() :] if match else text
        wh = f" {match.group(1).lower()}" if match else ""
        result = _drop_articles(body.rstrip("?").strip()) + wh
    elif kind == "drop_articles":
        result = _drop_articles(text)
    elif kind == "case_punct":
        lowered = text.lower()
        result = lowered.rstrip("?").rstrip() if lowered.endswith("?") else lowered + "?"
    else:
        result = _typo(text, rng)
    return result.strip() or text


def query_variants(question: str, kinds: tuple[str, ...] = REWRITE_KINDS,
                   seed: int = 0) -> list[tuple[str, str]]:
    """``(kind, rewritten question)`` for each kind."""
    return [(kind, rewrite(question, kind, seed)) for kind in kinds]
