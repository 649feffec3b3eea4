"""``InvarRetriever``: LangChain retriever over a ``RAGPipeline`` (e.g. ``InvarRAG``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import PrivateAttr

from ..data import Passage
from ..rag import RAGPipeline, Source, check_pipeline
from ..retrieval.base import check_k


def document_id(document: Document) -> str:
    """A document's id, or a content hash when it has none."""
    return document.id or "doc-" + hashlib.sha256(document.page_content.encode()).hexdigest()[:16]


def source_document(source: Source, original: Document | None = None) -> Document:
    """A retrieved passage as a ``Document`` (the original's metadata plus id, title, score)."""
    metadata = dict(original.metadata) if original is not None else {}
    metadata.update(id=source.passage.id, title=source.passage.title, score=source.score)
    return Document(page_content=source.passage.text, metadata=metadata, id=source.passage.id)


class InvarRetriever(BaseRetriever):
    """The top-``k`` documents by Invar score, each with ``metadata['score']``.

    Args:
        pipeline: An indexed pipeline (``InvarRAG.from_pretrained(system_dir, corpus=...)``),
            or use :meth:`from_documents` to index your documents.
        k: Documents per query (``invoke(query, k=...)`` overrides it per call).
    """

    k: int = 4
    _pipeline: RAGPipeline = PrivateAttr()
    _originals: dict[str, Document] = PrivateAttr(default_factory=dict)

    def __init__(self, *, pipeline: RAGPipeline, k: int = 4, tags: list[str] | None = None,
                 metadata: dict[str, Any] | None = None):
        super().__init__(k=check_k(k), tags=tags, metadata=metadata)
        if check_pipeline(pipeline).retriever is None:
            raise ValueError("the pipeline has no retriever (it answers closed-book)")
        self._pipeline = pipeline

    @classmethod
    def from_documents(cls, documents: Sequence[Document],
                       pipeline: RAGPipeline | str | os.PathLike[str],
                       **kwargs: Any) -> InvarRetriever:
        """Index ``documents`` with a pipeline or the system in directory ``pipeline``."""
        if not isinstance(pipeline, RAGPipeline):
            from ..rag import InvarRAG

            pipeline = InvarRAG.from_pretrained(pipeline)
        ids = [document_id(d) for d in documents]
        pipeline.index([Passage(i, d.page_content, str(d.metadata.get("title") or ""))
                        for i, d in zip(ids, documents)])
        retriever = cls(pipeline=pipeline, **kwargs)
        retriever._originals = dict(zip(ids, documents))
        return retriever

    @property
    def pipeline(self) -> RAGPipeline:
        return self._pipeline

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[Document]:
        k = self.k if k is None else check_k(k)
        [sources] = self._pipeline.retrieve_batch([query], k)
        return [source_document(s, self._originals.get(s.passage.id)) for s in sources]

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: int | None = None) -> list[Document]:
        return await asyncio.to_thread(self._get_relevant_documents, query,
                                       run_manager=run_manager.get_sync(), k=k)
