"""The trained Invar retriever behind the common :class:`Retriever` interface.

The FAISS index stores ``[v(d), c(d)]`` per passage and a query is ``[u(q) / tau, beta * c(q)]``,
so one inner product gives ``s(q, d) + beta * cos(c(q), c(d))`` and ``beta`` can change without
re-indexing. Passage vectors are computed in chunks that are kept on disk, so an interrupted
indexing run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data import Passage
from ..models.adapters import model_lock
from ..paths import cache_dir
from .artifacts import load_retriever_encoder
from .base import MANIFEST as INDEX_MANIFEST
from .base import (
    Retriever,
    SearchResult,
    check_instance,
    read_saved_ids,
    read_saved_manifest,
)
from .dense import encoder_identity
from .embedding_cache import cached_embeddings, texts_hash
from .invar import InvarEncoder

INDEX_DIR = "index"


def check_invar_retriever(retriever: Any) -> InvarRetriever:
    """For the framework wrappers: a loaded Invar retriever, not a path."""
    return check_instance(retriever, InvarRetriever, "retriever",
                          "InvarRetriever.from_pretrained(system_dir) or InvarRAG(...).retriever")


class InvarRetriever(Retriever):
    """Search a corpus with a trained Invar encoder (see :func:`InvarRetriever.from_pretrained`).

    Args:
        encoder: The loaded encoder.
        system_dir: Its system directory (recorded in saved indexes).
        retriever_hash: ``retriever.hash`` from the manifest.
        batch_size: Passage/query batch size for the LM.
        chunk_size: Passages per on-disk chunk while indexing (the unit of resumption).
        show_progress: Progress bar while indexing.
    """

    kind = "invar"

    def __init__(self, encoder: InvarEncoder, system_dir: str | os.PathLike[str],
                 retriever_hash: str, batch_size: int = 64, chunk_size: int = 1024,
                 show_progress: bool = True):
        super().__init__()
        self.encoder, self.system_dir = encoder, Path(system_dir).resolve()
        self.retriever_hash = retriever_hash
        self.batch_size, self.chunk_size, self.show_progress = batch_size, chunk_size, show_progress
        self.beta = encoder.settings.beta
        self._faiss: Any = None
        self._lock = model_lock(encoder.lm)  # shared with a generator on the same model

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str], index: str | os.PathLike[str]
                        | None = None, base_model: str | None = None,
                        **kwargs: Any) -> InvarRetriever:
        """Load a trained retriever and, if present, its saved index.

        Args:
            system_dir: The system directory (``invar_rag.json``).
            index: A saved index folder (default ``<system_dir>/index`` when it exists).
            base_model: Override the base model location (must be the same model).
            **kwargs: Passed to the constructor.
        """
        encoder, manifest = load_retriever_encoder(system_dir, base_model)
        retriever = cls(encoder, system_dir, manifest["retriever"]["hash"], **kwargs)
        default = Path(system_dir) / INDEX_DIR
        if index is not None or (default / INDEX_MANIFEST).is_file():
            retriever.load_index(index if index is not None else default)
        return retriever

    def load_index(self, path: str | os.PathLike[str]) -> None:
        """Load an index saved by :meth:`save`; it must have been built by this retriever."""
        path = Path(path)
        config = read_saved_manifest(path)
        if config.get("kind") != self.kind:
            raise ValueError(f"{path}: a {config.get('kind')!r} index, not an Invar index")
        self._attach_index(path, config)
        self.passage_ids = read_saved_ids(path)

    def _attach_index(self, path: Path, config: dict[str, Any]) -> None:
        """Read the FAISS index of ``path`` after checking this retriever built it."""
        import faiss

        if config.get("retriever_hash") != self.retriever_hash:
            raise ValueError(
                f"{path}: this index was built by retriever {config.get('system')!r} "
                f"(hash {str(config.get('retriever_hash'))[:12]}), not by {str(self.system_dir)!r} "
                f"(hash {self.retriever_hash[:12]}); re-index with `invar-rag index`")
        self._faiss = faiss.read_index(str(path / "index.faiss"))

    def identity(self) -> str:
        return f"{self.kind}:{self.retriever_hash}:beta={self.beta}"

    def unindexed(self) -> InvarRetriever:
        """A retriever with this encoder (shared, not copied), settings and ``beta``, and no
        index: for searching another corpus without replacing this one's index."""
        other = InvarRetriever(self.encoder, self.system_dir, self.retriever_hash,
                               self.batch_size, self.chunk_size, self.show_progress)
        other.beta = self.beta
        return other

    # --- indexing -------------------------------------------------------------------------

    def passage_vectors(self, passages: list[Passage]) -> np.ndarray:
        """``[v(d), c(d)]`` for ``passages``, computed chunk by chunk with resumable chunks."""
        texts = [p.full_text() for p in passages]
        coarse_id = encoder_identity(self.encoder.coarse_encoder) or ""
        coarse, _ = cached_embeddings(
            texts, coarse_id, lambda t: self.encoder.coarse(t, show_progress=self.show_progress),
            use_cache=bool(coarse_id))
        key = hashlib.sha256(f"{self.retriever_hash}|{texts_hash(texts)}".encode()).hexdigest()
        chunks = cache_dir() / "invar-index" / key[:32]
        chunks.mkdir(parents=True, exist_ok=True)
        needs_text = "text" in self.encoder.settings.doc_input
        vectors = []
        with tqdm(total=len(texts), desc="index (LM)", unit="passage",
                  disable=not self.show_progress) as bar:
            for number, start in enumerate(range(0, len(texts), self.chunk_size)):
                stop = min(start + self.chunk_size, len(texts))
                file = chunks / f"chunk-{number:06d}.npy"
                if file.is_file():
                    chunk = np.load(file, allow_pickle=False)
                else:
                    chunk = self.encoder.encode("passage", texts[start:stop] if needs_text
                                                else None, coarse[start:stop], self.batch_size)
                    tmp = file.with_suffix(".tmp.npy")
                    np.save(tmp, chunk, allow_pickle=False)
                    tmp.replace(file)
                vectors.append(chunk)
                bar.update(stop - start)
        return np.concatenate([np.concatenate(vectors), coarse], axis=1).astype(np.float32)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """``[v(d), c(d)]`` for a few passage texts, uncached (for vector stores and reranking;
        :meth:`index` caches a corpus's vectors on disk)."""
        with self._lock:
            coarse = self.encoder.coarse(texts)
            needs_text = "text" in self.encoder.settings.doc_input
            lm = self.encoder.encode("passage", texts if needs_text else None, coarse,
                                     self.batch_size)
        return np.concatenate([lm, coarse], axis=1).astype(np.float32)

    def _index(self, passages: list[Passage]) -> None:
        import faiss

        vectors = self.passage_vectors(passages)
        self._faiss = faiss.IndexFlatIP(vectors.shape[1])
        self._faiss.add(vectors)

    # --- search ---------------------------------------------------------------------------

    def query_vectors(self, queries: list[str], beta: float | None = None) -> np.ndarray:
        """``[u(q) / tau, beta * c(q)]`` for ``queries``."""
        beta = self.beta if beta is None else beta
        with self._lock:  # one tokenizer and model for all threads
            coarse = self.encoder.coarse(queries)
            u = self.encoder.encode("query", queries, coarse, self.batch_size)
        return np.concatenate([u / self.encoder.settings.tau, beta * coarse], axis=1)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[SearchResult]:
        """Top-``k`` passages for precomputed query vectors."""
        scores, rows = self._faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        ids = self.passage_ids
        return [SearchResult([ids[i] for i in row if i >= 0], [float(s) for s in srow[: len(row)]])
                for row, srow in zip(rows, scores)]

    def _search(self, queries: list[str], k: int) -> list[SearchResult]:
        return self.search_vectors(self.query_vectors(queries), k)

    # --- persistence ----------------------------------------------------------------------

    def _save_state(self, path: Path) -> dict[str, Any]:
        import faiss

        faiss.write_index(self._faiss, str(path / "index.faiss"))
        return {"system": os.path.relpath(self.system_dir, path.resolve()),
                "retriever_hash": self.retriever_hash}

    @classmethod
    def _load_state(cls, path: Path, config: dict[str, Any]) -> InvarRetriever:
        system = (path / config["system"]).resolve()
        encoder, manifest = load_retriever_encoder(system)
        retriever = cls(encoder, system, manifest["retriever"]["hash"])
        retriever._attach_index(path, config)  # Retriever.load reads the passage ids
        return retriever
