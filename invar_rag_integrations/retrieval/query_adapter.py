"""A residual linear query adapter on frozen MiniLM vectors (a baseline a user would train
instead of an LLM retriever): ``u(q) = normalize(c(q) + W c(q) + b)``, passages unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .dense import DenseRetriever

ADAPTER_FILE = "query_adapter.safetensors"


class QueryAdapterRetriever(DenseRetriever):
    """MiniLM retrieval with a trained residual linear map on the query side.

    Args:
        weight: ``W`` of shape ``[d, d]``.
        bias: ``b`` of shape ``[d]``.
        encoder, **kwargs: As for :class:`DenseRetriever`.
    """

    kind = "minilm-adapter"

    def __init__(self, weight: np.ndarray, bias: np.ndarray, encoder: str | Any = "minilm",
                 **kwargs: Any):
        super().__init__(encoder, **kwargs)
        dim = self.encoder.get_embedding_dimension()
        if weight.shape != (dim, dim) or bias.shape != (dim,):
            raise ValueError(f"the adapter must be [{dim}, {dim}] + [{dim}] for this encoder, "
                             f"got {list(weight.shape)} + {list(bias.shape)}")
        self.weight = weight.astype(np.float32)
        self.bias = bias.astype(np.float32)

    def identity(self) -> str:
        digest = hashlib.sha256(self.weight.tobytes() + self.bias.tobytes())
        return f"{super().identity()}:adapter={digest.hexdigest()[:16]}"

    def query_vectors(self, queries: list[str]) -> np.ndarray:
        """``normalize(c(q) + W c(q) + b)``."""
        coarse = self.encode(queries)
        adapted = coarse + coarse @ self.weight.T + self.bias
        return adapted / np.linalg.norm(adapted, axis=1, keepdims=True).clip(1e-12)

    def _search(self, queries: list[str], k: int):
        return self.search_vectors(self.query_vectors(queries), k)

    def _save_state(self, path: Path) -> dict[str, Any]:
        from safetensors.numpy import save_file

        save_file({"weight": self.weight, "bias": self.bias}, str(path / ADAPTER_FILE))
        return super()._save_state(path)

    @classmethod
    def _load_state(cls, path: Path, config: dict[str, Any]) -> QueryAdapterRetriever:
        from safetensors.numpy import load_file

        weights = load_file(str(path / ADAPTER_FILE))
        dense = DenseRetriever._load_state(path, config)
        retriever = cls(weights["weight"], weights["bias"], dense.encoder,
                        batch_size=dense.batch_size, label=dense.label)
        retriever.encoder_name, retriever._faiss = dense.encoder_name, dense._faiss
        retriever._starts = dense._starts
        return retriever
