"""Dense baseline: a sentence-transformers encoder (MiniLM by default) + FAISS inner product."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Passage
from ..models import DEFAULT_COARSE_ENCODER, load_coarse_encoder
from ..models.encoding import PASSAGE, QUERY, encode, text_room
from .base import Retriever, SearchResult
from .embedding_cache import cached_embeddings
from .text_windows import text_windows


def encoder_identity(encoder: Any) -> str | None:
    """Stable identity of an encoder loaded by :func:`load_coarse_encoder`, else ``None``."""
    source = getattr(encoder, "invar_source", None)
    return source.identity if source is not None else None


def best_window_cosines(query_vectors: np.ndarray, vectors: np.ndarray, starts: np.ndarray,
                        rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per query, the best cosine among the window vectors of each passage ``rows[q]`` (passage
    ``r`` owns ``vectors[starts[r]:starts[r + 1]]``)."""
    return [np.array([float((vectors[starts[r] : starts[r + 1]] @ q).max()) for r in wanted],
                     dtype=np.float32) for q, wanted in zip(query_vectors, rows)]


class DenseRetriever(Retriever):
    """Cosine-similarity retrieval with normalised embeddings in a FAISS ``IndexFlatIP``.

    With ``windows``, a passage longer than the encoder reads (MiniLM: 256 word pieces) is
    indexed as several windows of its text (``text_windows.text_windows``, 3/4 of the limit apart)
    under one id, and scores as its best window; without, the encoder reads its beginning only.

    Args:
        encoder: A model name for :func:`load_coarse_encoder` or a loaded ``SentenceTransformer``.
        batch_size: Encoding batch size (sentence-transformers sorts each call by length).
        use_cache: Reuse corpus embeddings cached on disk for the same encoder and corpus.
        show_progress: Show a progress bar while encoding the corpus.
        label: The system name in result tables (default: ``minilm`` for the embedded encoder,
            else the encoder's name; ``-windows`` is added with windows).
        windows: Index long passages as windows (see above).
    """

    kind = "dense"

    def __init__(self, encoder: str | Any = DEFAULT_COARSE_ENCODER, batch_size: int = 64,
                 use_cache: bool = True, show_progress: bool = True, label: str | None = None,
                 windows: bool = False):
        super().__init__()
        self.label, self.windows = label, windows
        self.encoder_name = encoder if isinstance(encoder, str) else getattr(
            getattr(encoder, "invar_source", None), "name", "custom")
        self.encoder = load_coarse_encoder(encoder) if isinstance(encoder, str) else encoder
        self.batch_size, self.use_cache, self.show_progress = batch_size, use_cache, show_progress
        self.last_index_cached = False
        self._faiss: Any = None
        self._starts: np.ndarray | None = None  # first vector row of each passage (+ the end)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        name = "minilm" if self.encoder_name == DEFAULT_COARSE_ENCODER else self.encoder_name
        return f"{name}-windows" if self.windows else name

    def identity(self) -> str:
        windows = ":windows" if self.windows else ""
        return f"{self.kind}:{encoder_identity(self.encoder) or self.encoder_name}{windows}"

    def encode(self, texts: list[str], kind: str = QUERY,
               show_progress: bool = False) -> np.ndarray:
        """Normalised float32 embeddings of ``texts`` read as ``kind`` (``query`` or
        ``passage``: each with the encoder's own prompt, ``models/encoding.py``)."""
        return encode(self.encoder, texts, kind, self.batch_size, show_progress)

    def pieces(self, passages: Sequence[Passage]) -> tuple[list[str], np.ndarray]:
        """The texts the index holds for ``passages`` (their windows, with ``windows``), and
        the first row of each passage among them (plus the end)."""
        if not self.windows:
            return [p.full_text() for p in passages], np.arange(len(passages) + 1)
        size = text_room(self.encoder, PASSAGE)
        texts, starts = [], [0]
        for p in passages:
            texts += text_windows(self.encoder.tokenizer, p.title, p.text, size, size * 3 // 4)
            starts.append(len(texts))
        return texts, np.asarray(starts)

    def _index(self, passages: list[Passage]) -> None:
        import faiss

        texts, self._starts = self.pieces(passages)
        identity = encoder_identity(self.encoder)
        vectors, self.last_index_cached = cached_embeddings(
            texts, identity or "", lambda batch: self.encode(batch, PASSAGE),
            use_cache=self.use_cache and identity is not None,
            show_progress=self.show_progress)
        self._faiss = faiss.IndexFlatIP(vectors.shape[1])
        self._faiss.add(vectors)

    def vectors(self) -> np.ndarray:
        """The indexed embeddings ``[N, d]``, in index order (with windows: every window)."""
        if self._faiss is None:
            raise RuntimeError("DenseRetriever has no index: call index() or load() first")
        return self._faiss.reconstruct_n(0, self._faiss.ntotal)

    def passage_vectors(self, vectors: np.ndarray | None = None,
                        rows: Sequence[int] | None = None) -> np.ndarray:
        """One vector per passage (by index row; default all): its first window's, what the
        encoder reads of it without windows. ``vectors``: :meth:`vectors`, when at hand."""
        vectors = self.vectors() if vectors is None else vectors
        firsts = self._starts[:-1]
        return vectors[firsts if rows is None else firsts[list(rows)]]

    def passage_cosines(self, query_vectors: np.ndarray, rows: Sequence[Sequence[int]],
                        vectors: np.ndarray | None = None) -> list[np.ndarray]:
        """Per query, the cosine of each passage (by index row) as search scores it: its best
        window's. ``vectors``: :meth:`vectors`, when at hand."""
        vectors = self.vectors() if vectors is None else vectors
        return best_window_cosines(query_vectors, vectors, self._starts, rows)

    def _search(self, queries: list[str], k: int) -> list[SearchResult]:
        return self.search_vectors(self.encode(queries), k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[SearchResult]:
        """Top-``k`` passages for precomputed query vectors (with windows, searched deeper until
        ``k`` distinct passages are found)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        total = self._faiss.ntotal
        depth = min(total, k if len(self._starts) == total + 1 else 4 * k)
        while True:
            scores, rows = self._faiss.search(vectors, depth)
            results = [self._passages_of(row, srow, k) for row, srow in zip(rows, scores)]
            if depth == total or all(len(r.ids) == k for r in results):
                return results
            depth = min(total, 4 * depth)

    def _passages_of(self, rows: np.ndarray, scores: np.ndarray, k: int) -> SearchResult:
        """The first ``k`` distinct passages of ranked vector rows (each at its best window)."""
        owners = np.searchsorted(self._starts, rows[rows >= 0], side="right") - 1
        ids, kept = [], []
        seen: set[int] = set()
        for owner, score in zip(owners.tolist(), scores.tolist()):
            if owner not in seen:
                seen.add(owner)
                ids.append(self.passage_ids[owner])
                kept.append(float(score))
                if len(ids) == k:
                    break
        return SearchResult(ids, kept)

    def _save_state(self, path: Path) -> dict[str, Any]:
        import faiss

        faiss.write_index(self._faiss, str(path / "index.faiss"))
        np.save(path / "starts.npy", self._starts, allow_pickle=False)
        return {"encoder": self.encoder_name, "encoder_identity": encoder_identity(self.encoder),
                "batch_size": self.batch_size, "label": self.label, "windows": self.windows}

    @classmethod
    def _load_state(cls, path: Path, config: dict[str, Any]) -> DenseRetriever:
        import faiss

        retriever = cls(config["encoder"], batch_size=config.get("batch_size", 64),
                        label=config.get("label"), windows=config.get("windows", False))
        found = encoder_identity(retriever.encoder)
        if config.get("encoder_identity") not in (None, found):
            raise ValueError(f"{path}: index was built with encoder {config['encoder_identity']}, "
                             f"but {config['encoder']!r} now resolves to {found}; re-index")
        retriever._faiss = faiss.read_index(str(path / "index.faiss"))
        starts = path / "starts.npy"
        retriever._starts = np.load(starts, allow_pickle=False) if starts.is_file() \
            else np.arange(retriever._faiss.ntotal + 1)  # an index saved before windows
        return retriever
