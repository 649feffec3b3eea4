"""``InvarEmbeddings``: the Invar retriever's stage-1 (MiniLM) vectors for any LangChain vector
store.

A vector store can hold only per-text vectors, and the Invar scorer reads a passage together
with the question, so a store gets stage 1's normalised coarse vectors (cosine, inner product
and L2 stores rank alike). Compress the store's results with :class:`~.compressor.InvarReranker`
(``ContextualCompressionRetriever``) to rank them with the scorer.
"""

from __future__ import annotations

import asyncio
import os

from langchain_core.embeddings import Embeddings

from ..invar.checks import check_two_stage
from ..invar.two_stage import TwoStageRetriever
from ..retrieval.base import check_text


class InvarEmbeddings(Embeddings):
    """``embed_query`` and ``embed_documents`` give stage-1 vectors (a long document: the
    mean of its windows' vectors, ``InvarReranker.text_vectors``).

    Args:
        retriever: The core Invar retriever (no index needed), or
        system_dir: a trained system directory to load it from.
    """

    def __init__(self, retriever: TwoStageRetriever | None = None,
                 system_dir: str | os.PathLike[str] | None = None):
        if (retriever is None) == (system_dir is None):
            raise ValueError("give exactly one of retriever or system_dir")
        self.retriever = check_two_stage(retriever) if retriever is not None else \
            TwoStageRetriever.from_pretrained(system_dir, index=None, show_progress=False)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        for text in texts:
            check_text(text, "document text")
        return self.retriever.reranker.text_vectors(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.retriever.reranker.coarse([check_text(text, "query")])[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)
