"""``InvarEmbedding``: the Invar retriever's stage-1 (MiniLM) vectors as a LlamaIndex embedding.

A vector store can hold only per-text vectors, and the Invar scorer reads a passage together
with the question, so a vector store gets stage 1's coarse vectors ``c(x)`` (normalised: cosine,
inner product and L2 stores rank alike). Put :class:`~.postprocessor.InvarReranker` after the
store's retriever to rank its candidates with the scorer.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.callbacks import CallbackManager

from ..invar.checks import check_two_stage
from ..invar.two_stage import TwoStageRetriever
from ..retrieval.base import check_k, check_text


class InvarEmbedding(BaseEmbedding):
    """Stage-1 vectors for queries (``_get_query_embedding``) and nodes
    (``_get_text_embedding``; a long node: the mean of its windows' vectors,
    ``InvarReranker.text_vectors``).

    Args:
        retriever: The core Invar retriever (no index needed).
        embed_batch_size: Texts per batch when embedding nodes.
    """

    _core: TwoStageRetriever = PrivateAttr()

    def __init__(self, retriever: TwoStageRetriever, embed_batch_size: int = 16,
                 callback_manager: CallbackManager | None = None):
        retriever = check_two_stage(retriever)
        super().__init__(model_name=f"invar-stage1:{retriever.settings.stage1}",
                         embed_batch_size=check_k(embed_batch_size, "embed_batch_size"),
                         callback_manager=callback_manager)
        self._core = retriever

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str],
                        **kwargs: Any) -> InvarEmbedding:
        return cls(TwoStageRetriever.from_pretrained(system_dir, show_progress=False), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "InvarEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._core.reranker.coarse([check_text(query)])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        for text in texts:
            check_text(text, "text to embed")
        return self._core.reranker.text_vectors(list(texts)).tolist()

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)
