"""Dense baseline: a sentence-transformers encoder (MiniLM by default) + FAISS inner product."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import Passage
from ..models import DEFAULT_COARSE_ENCODER, load_coarse_encoder
from .base import Retriever, SearchResult
from .embedding_cache import cached_embeddings


def encoder_identity(encoder: Any) -> str | None:
    """Stable identity of an encoder loaded by :func:`load_coarse_encoder`, else ``None``."""
    source = getattr(encoder, "invar_source", None)
    return source.identity if source is not None else None


class DenseRetriever(Retriever):
    """Cosine-similarity retrieval with normalised embeddings in a FAISS ``IndexFlatIP``.

    Args:
        encoder: A model name for :func:`load_coarse_encoder` or a loaded ``SentenceTransformer``.
        batch_size: Encoding batch size (sentence-transformers sorts each call by length).
        use_cache: Reuse corpus embeddings cached on disk for the same encoder and corpus.
        show_progress: Show a progress bar while encoding the corpus.
        label: The system name in result tables (default: ``minilm`` for the embedded encoder,
            else the encoder's name).
    """

    kind = "dense"

    def __init__(self, encoder: str | Any = DEFAULT_COARSE_ENCODER, batch_size: int = 64,
                 use_cache: bool = True, show_progress: bool = True, label: str | None = None):
        super().__init__()
        self.label = label
        self.encoder_name = encoder if isinstance(encoder, str) else getattr(
            getattr(encoder, "invar_source", None), "name", "custom")
        self.encoder = load_coarse_encoder(encoder) if isinstance(encoder, str) else encoder
        self.batch_size, self.use_cache, self.show_progress = batch_size, use_cache, show_progress
        self.last_index_cached = False
        self._faiss: Any = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return "minilm" if self.encoder_name == DEFAULT_COARSE_ENCODER else self.encoder_name

    def identity(self) -> str:
        return f"{self.kind}:{encoder_identity(self.encoder) or self.encoder_name}"

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """Normalised float32 embeddings of ``texts``."""
        return self.encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=show_progress)

    def _index(self, passages: list[Passage]) -> None:
        import faiss

        texts = [p.full_text() for p in passages]
        identity = encoder_identity(self.encoder)
        vectors, self.last_index_cached = cached_embeddings(
            texts, identity or "", self.encode, use_cache=self.use_cache and identity is not None,
            show_progress=self.show_progress)
        self._faiss = faiss.IndexFlatIP(vectors.shape[1])
        self._faiss.add(vectors)

    def vectors(self) -> np.ndarray:
        """The indexed passage embeddings ``[N, d]``, in index order."""
        if self._faiss is None:
            raise RuntimeError("DenseRetriever has no index: call index() or load() first")
        return self._faiss.reconstruct_n(0, self._faiss.ntotal)

    def _search(self, queries: list[str], k: int) -> list[SearchResult]:
        return self.search_vectors(self.encode(queries), k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[SearchResult]:
        """Top-``k`` passages for precomputed query vectors."""
        scores, rows = self._faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        ids = self.passage_ids
        return [SearchResult([ids[i] for i in row if i >= 0], [float(s) for s in srow[: len(row)]])
                for row, srow in zip(rows, scores)]

    def _save_state(self, path: Path) -> dict[str, Any]:
        import faiss

        faiss.write_index(self._faiss, str(path / "index.faiss"))
        return {"encoder": self.encoder_name, "encoder_identity": encoder_identity(self.encoder),
                "batch_size": self.batch_size, "label": self.label}

    @classmethod
    def _load_state(cls, path: Path, config: dict[str, Any]) -> DenseRetriever:
        import faiss

        retriever = cls(config["encoder"], batch_size=config.get("batch_size", 64),
                        label=config.get("label"))
        found = encoder_identity(retriever.encoder)
        if config.get("encoder_identity") not in (None, found):
            raise ValueError(f"{path}: index was built with encoder {config['encoder_identity']}, "
                             f"but {config['encoder']!r} now resolves to {found}; re-index")
        retriever._faiss = faiss.read_index(str(path / "index.faiss"))
        return retriever
