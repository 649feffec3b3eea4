"""``InvarEmbeddings``: the Invar query and passage vectors for any LangChain vector store.

A passage vector is ``[v(d), c(d)]`` and a query vector ``[u(q) / tau, beta * c(q)]``; their
inner product is the Invar score, and all passage vectors have the same norm, so cosine, inner
product and L2 vector stores rank alike.
"""

from __future__ import annotations

import asyncio
import os

from langchain_core.embeddings import Embeddings

from ..retrieval.base import check_text
from ..retrieval.invar_retriever import InvarRetriever as CoreInvarRetriever
from ..retrieval.invar_retriever import check_invar_retriever


class InvarEmbeddings(Embeddings):
    """``embed_query`` gives query vectors, ``embed_documents`` passage vectors.

    Args:
        retriever: The core Invar retriever (no index needed), or
        system_dir: a trained system directory to load it from.
    """

    def __init__(self, retriever: CoreInvarRetriever | None = None,
                 system_dir: str | os.PathLike[str] | None = None):
        if (retriever is None) == (system_dir is None):
            raise ValueError("give exactly one of retriever or system_dir")
        self.retriever = check_invar_retriever(retriever) if retriever is not None else \
            CoreInvarRetriever.from_pretrained(system_dir, show_progress=False)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        for text in texts:
            check_text(text, "document text")
        return self.retriever.embed_passages(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.retriever.query_vectors([check_text(text, "query")])[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)
