"""The one retriever interface every retriever (BM25, dense, Invar) implements."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..data import Passage, check_corpus, save_passages

MANIFEST = "retriever.json"
IDS_FILE = "ids.json"
PASSAGES_FILE = "passages.jsonl"


@dataclass(frozen=True)
class SearchResult:
    """Ranked passage ids and scores for one query, best first."""

    ids: list[str]
    scores: list[float]


def check_queries(queries: Sequence[str]) -> list[str]:
    """Validate a batch of queries: a list of non-empty strings."""
    if isinstance(queries, str):
        raise TypeError("queries must be a sequence of strings, not one string; wrap it in a list")
    queries = list(queries)
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise TypeError(f"queries[{i}] must be a string, got {type(query).__name__}")
        if not query.strip():
            raise ValueError(f"queries[{i}] is empty or whitespace; every query needs text")
    return queries


def check_k(k: int, name: str = "k") -> int:
    """Validate a result count such as ``k`` or ``top_n`` (a positive integer)."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return k


def check_text(text: Any, what: str = "query") -> str:
    """Validate one query or text: a string with something besides white space."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the {what} must be a non-empty string, got {text!r}")
    return text


def check_instance(value: Any, cls: type | tuple[type, ...], name: str, example: str) -> Any:
    """Validate that ``value`` is a loaded ``cls`` (``example`` says how to get one)."""
    if not isinstance(value, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise TypeError(f"{name} must be a loaded {names} such as {example}, "
                        f"got {type(value).__name__} {value!r:.80}")
    return value


def read_saved_manifest(path: Path) -> dict[str, Any]:
    """The ``retriever.json`` settings of a saved retriever folder."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a saved retriever: no {MANIFEST}")
    return json.loads(manifest.read_text(encoding="utf-8"))


def read_saved_ids(path: Path) -> list[str]:
    """The passage ids of a saved retriever folder, in index order."""
    return json.loads((path / IDS_FILE).read_text(encoding="utf-8"))


class Retriever(ABC):
    """Index passages, search them, save and load the index.

    Subclasses set ``kind`` (stored in the saved manifest) and implement ``_index``,
    ``_search``, ``_save_state`` and ``_load_state``; validation lives here once.
    """

    kind: ClassVar[str]
    _registry: ClassVar[dict[str, type[Retriever]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Retriever._registry[cls.kind] = cls

    def __init__(self) -> None:
        self.passage_ids: list[str] = []

    @property
    def name(self) -> str:
        """Short system name for result tables."""
        return self.kind

    def identity(self) -> str:
        """What decides this retriever's rankings apart from the corpus (a key for caches)."""
        return self.kind

    def index(self, passages: Sequence[Passage]) -> None:
        """Build the index over ``passages`` (replacing any previous one)."""
        passages = check_corpus(passages)
        self._index(passages)
        self.passage_ids = [p.id for p in passages]

    def check_depth(self, k: int, name: str = "k") -> int:
        """Validate a result count (a positive integer; subclasses may bound it)."""
        return check_k(k, name)

    def check_indexed(self) -> None:
        """Fail, saying what to do, when there is no index to search."""
        if not self.passage_ids:
            raise RuntimeError(f"{type(self).__name__} has no index: call index() or load() first")

    def search(self, queries: Sequence[str], k: int) -> list[SearchResult]:
        """Top-``k`` passages per query; ``k`` above the corpus size returns every passage.
        Queries and ``k`` are validated here, once, for every wrapper above."""
        queries = check_queries(queries)
        k = self.check_depth(k)
        self.check_indexed()
        if not queries:
            return []
        return self._search(queries, min(k, len(self.passage_ids)))

    def save(self, path: str | os.PathLike[str],
             passages: Sequence[Passage] | None = None) -> Path:
        """Save the index to folder ``path`` with a ``retriever.json`` manifest, and the indexed
        ``passages`` (their texts, for generation) when given."""
        if not self.passage_ids:
            raise RuntimeError("nothing to save: the retriever has no index")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / IDS_FILE).write_text(json.dumps(self.passage_ids), encoding="utf-8")
        config = {"kind": self.kind, **self._save_state(path)}
        (path / MANIFEST).write_text(json.dumps(config, indent=2), encoding="utf-8")
        if passages is not None:
            if [p.id for p in passages] != self.passage_ids:
                raise ValueError("the passages to save are not the ones indexed")
            save_passages(path / PASSAGES_FILE, passages)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Retriever:
        """Load a saved retriever of whatever kind its manifest names."""
        path = Path(path)
        config = read_saved_manifest(path)
        kind = config.pop("kind", None)
        if kind not in Retriever._registry:
            from . import stage1_modules

            stage1_modules()  # register every stage-1 kind
        if kind not in Retriever._registry:
            hint = " (an Invar index: import invar_rag_integrations.invar, or load it " \
                   "with catalog.make_retriever)" if kind == "invar" else ""
            raise ValueError(f"{path / MANIFEST}: unknown retriever kind {kind!r}{hint}; "
                             f"known: {sorted(Retriever._registry)}")
        retriever = Retriever._registry[kind]._load_state(path, config)
        retriever.passage_ids = read_saved_ids(path)
        return retriever

    @abstractmethod
    def _index(self, passages: list[Passage]) -> None: ...

    @abstractmethod
    def _search(self, queries: list[str], k: int) -> list[SearchResult]: ...

    @abstractmethod
    def _save_state(self, path: Path) -> dict[str, Any]:
        """Write index files into ``path``; return settings for the manifest."""

    @classmethod
    @abstractmethod
    def _load_state(cls, path: Path, config: dict[str, Any]) -> Retriever:
        """Rebuild a retriever from its folder and manifest settings."""


def top_k(ids: Sequence[str], scores: np.ndarray, k: int) -> SearchResult:
    """The ``k`` best of ``ids`` by ``scores``, best first (ties keep the given order)."""
    order = np.argsort(-scores, kind="stable")[:k]
    return SearchResult([ids[i] for i in order], [float(scores[i]) for i in order])
