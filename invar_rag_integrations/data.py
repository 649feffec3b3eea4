"""Core data types and strict JSONL reading shared by retrieval, generation and evaluation."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Passage:
    """A retrievable unit of text."""

    id: str
    text: str
    title: str = ""

    def full_text(self) -> str:
        """Title and text as every encoder and prompt sees them."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class Question:
    """A question with its gold answers and, where known, the passages that answer it."""

    id: str
    question: str
    answers: tuple[str, ...]
    dataset: str = ""
    gold_passage_ids: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line of a UTF-8 JSONL file.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not UTF-8 or not a JSON object; the message names file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not UTF-8 text ({err.reason})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: malformed JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            yield number, record


def load_passages(path: str | os.PathLike[str]) -> list[Passage]:
    """Read a corpus file of ``{"id", "text", ["title"]}`` records.

    Raises:
        ValueError: A record lacks ``id``/``text``, ids repeat, or the file holds no passage.
    """
    passages: list[Passage] = []
    for number, record in read_jsonl(path):
        if "id" not in record or "text" not in record:
            raise ValueError(f"{path}:{number}: a passage needs 'id' and 'text' fields")
        passages.append(Passage(str(record["id"]), str(record["text"]),
                                str(record.get("title") or "")))
    return check_corpus(passages, str(path))


def save_passages(path: str | os.PathLike[str], passages: Iterable[Passage]) -> Path:
    """Write passages as the JSON-lines corpus format :func:`load_passages` reads."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for p in passages:
            handle.write(json.dumps({"id": p.id, "title": p.title, "text": p.text},
                                    ensure_ascii=False) + "\n")
    return path


def check_corpus(passages: Iterable[Passage], source: str = "passages") -> list[Passage]:
    """Validate a corpus: at least one passage and unique ids.

    Raises:
        ValueError: The corpus is empty or ids repeat (the message names them and ``source``).
    """
    passages = list(passages)
    if not passages:
        raise ValueError(f"{source}: the corpus is empty")
    duplicates = sorted(pid for pid, n in Counter(p.id for p in passages).items() if n > 1)
    if duplicates:
        shown = ", ".join(map(repr, duplicates[:10]))
        raise ValueError(f"{source}: duplicate passage ids: {shown}")
    return passages


def passage_text(passage: Passage | str) -> str:
    """A passage as the scorer reads it: ``Title. text`` (a string is taken as it is)."""
    if isinstance(passage, str):
        return passage
    return f"{passage.title}. {passage.text}" if passage.title else passage.text
