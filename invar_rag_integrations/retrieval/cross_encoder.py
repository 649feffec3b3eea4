"""A cross-encoder reranker over a stage-1 retriever (the ``ce-ft`` baseline): stage 1
proposes ``candidates`` passages, a BERT-style cross-encoder reads each with the question and
its one logit ranks them. It stands where the Invar scorer stands, over the same candidates."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Passage, passage_text
from ..retrieval.base import top_k
from ..retrieval.stage1 import dense_part, make_stage1
from .base import Retriever, SearchResult, check_k

MODEL_DIR = "cross_encoder"
STAGE1_DIR = "stage1"


class CrossEncoderRetriever(Retriever):
    """Stage 1 (RRF of BM25 and MiniLM by default) reranked by a cross-encoder.

    Args:
        model: A ``sentence_transformers.cross_encoder.CrossEncoder`` with one output.
        candidates: Stage-1 passages read per query (``k`` is at most this).
        stage1: ``rrf`` or ``minilm``.
        coarse_encoder: Stage 1's dense encoder.
        batch_size: Pairs per forward pass.
        label: Name in result tables.
    """

    kind = "cross-encoder"

    def __init__(self, model: Any, candidates: int = 5, stage1: str = "rrf",
                 coarse_encoder: Any = "minilm", batch_size: int = 32, label: str = "ce-ft"):
        super().__init__()
        self.model, self.candidates = model, check_k(candidates, "candidates")
        self.stage1_name, self.batch_size, self.label = stage1, batch_size, label
        self.stage1 = make_stage1(stage1, coarse_encoder, show_progress=False)
        self.passages: dict[str, Passage] = {}

    @property
    def name(self) -> str:
        return self.label

    def identity(self) -> str:
        weights = hashlib.sha256()
        for tensor in self.model.model.state_dict().values():
            weights.update(tensor.detach().flatten()[:1024].float().numpy().tobytes())
        return (f"{self.kind}:{weights.hexdigest()[:16]}:candidates={self.candidates}:"
                f"{self.stage1.identity()}")

    def check_depth(self, k: int, name: str = "k") -> int:
        k = check_k(k, name)
        if k > self.candidates:
            raise ValueError(f"{name} = {k} is larger than the reranker's candidate depth "
                             f"(candidates = {self.candidates})")
        return k

    def _index(self, passages: list[Passage]) -> None:
        self.stage1.index(passages)
        self.passages = {p.id: p for p in passages}

    def scores(self, query: str, passages: list[Passage | str]) -> np.ndarray:
        """The cross-encoder's logit for each passage (one without text: ``-inf``)."""
        texts = [passage_text(p) for p in passages]
        found = np.full(len(texts), -np.inf, dtype=np.float32)
        read = [i for i, t in enumerate(texts) if t.strip()]
        if read:
            found[read] = self.model.predict([(query, texts[i]) for i in read],
                                             batch_size=self.batch_size,
                                             activation_fn=_logit, show_progress_bar=False)
        return found

    def _search(self, queries: list[str], k: int) -> list[SearchResult]:
        proposed = self.stage1.search(queries, min(self.candidates, len(self.passage_ids)))
        return [top_k(r.ids, self.scores(q, [self.passages[i] for i in r.ids]), k)
                for q, r in zip(queries, proposed)]

    def _save_state(self, path: Path) -> dict[str, Any]:
        self.model.save(str(path / MODEL_DIR))
        self.stage1.save(path / STAGE1_DIR, list(self.passages.values()))
        return {"candidates": self.candidates, "stage1": self.stage1_name,
                "batch_size": self.batch_size, "label": self.label}

    @classmethod
    def _load_state(cls, path: Path, config: dict[str, Any]) -> CrossEncoderRetriever:
        from ..data import load_passages
        from .base import PASSAGES_FILE

        stage1 = Retriever.load(path / STAGE1_DIR)
        retriever = cls(load_cross_encoder(path / MODEL_DIR), config["candidates"],
                        config["stage1"], dense_part(stage1).encoder, config["batch_size"],
                        config["label"])
        retriever.stage1 = stage1
        retriever.passages = {p.id: p for p in load_passages(path / STAGE1_DIR / PASSAGES_FILE)}
        return retriever


def _logit(x: Any) -> Any:
    """The cross-encoder's raw logit as the score (no sigmoid: nothing saturates)."""
    return x


def load_cross_encoder(path: str | Path, max_length: int | None = None) -> Any:
    """A saved cross-encoder, or a BERT folder given a fresh one-logit head, on the CPU."""
    from sentence_transformers.cross_encoder import CrossEncoder

    return CrossEncoder(str(path), num_labels=1, max_length=max_length, device="cpu")
