"""``InvarRetriever``: LangChain retriever over the core two-stage Invar retriever."""

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
from ..invar.checks import check_two_stage
from ..invar.two_stage import TwoStageRetriever


def document_id(document: Document) -> str:
    """A document's id, or a content hash when it has none."""
    return document.id or "doc-" + hashlib.sha256(document.page_content.encode()).hexdigest()[:16]


def document_passage(document: Document, pid: str | None = None) -> Passage:
    """A document as a core passage (title from ``metadata['title']`` when present)."""
    return Passage(pid or document_id(document), document.page_content,
                   str(document.metadata.get("title") or ""))


def scored_document(passage: Passage, score: float, original: Document | None = None) -> Document:
    """A ranked passage as a ``Document`` (the original's metadata plus id, title, score)."""
    metadata = dict(original.metadata) if original is not None else {}
    metadata.update(id=passage.id, title=passage.title, score=score)
    return Document(page_content=passage.text, metadata=metadata, id=passage.id)


class InvarRetriever(BaseRetriever):
    """The top-``k`` documents by the two-stage Invar retriever, each with ``metadata['score']``
    (with the Invar retriever: the probability that it holds an answer to the query, in [0, 1],
    calibrated).

    Args:
        retriever: An indexed core retriever (``InvarRetriever.from_pretrained(system_dir)`` with
            its saved index, or ``InvarRAG(...).retriever``), or use :meth:`from_documents` to
            index your documents.
        k: Documents per query (``invoke(query, k=...)`` overrides it per call); at most the
            retriever's candidate depth.
    """

    k: int = 4
    _core: TwoStageRetriever = PrivateAttr()
    _originals: dict[str, Document] = PrivateAttr(default_factory=dict)

    def __init__(self, *, retriever: TwoStageRetriever, k: int = 4,
                 tags: list[str] | None = None, metadata: dict[str, Any] | None = None):
        core = check_two_stage(retriever)
        super().__init__(k=core.check_depth(k), tags=tags, metadata=metadata)
        self._core = core
        if not core.passage_ids:
            raise ValueError("the retriever has no index; use InvarRetriever.from_documents")

    @classmethod
    def from_documents(cls, documents: Sequence[Document],
                       retriever: TwoStageRetriever | str | os.PathLike[str],
                       **kwargs: Any) -> InvarRetriever:
        """Index ``documents`` with a core retriever (its model is shared; its own index is left
        alone) or with the retriever of the system in directory ``retriever``."""
        if isinstance(retriever, (str, os.PathLike)):
            retriever = TwoStageRetriever.from_pretrained(retriever, index=None,
                                                           show_progress=False)
        core = check_two_stage(retriever).unindexed()
        ids = [document_id(d) for d in documents]
        core.index([document_passage(d, i) for d, i in zip(documents, ids)])
        wrapper = cls(retriever=core, **kwargs)
        wrapper._originals = dict(zip(ids, documents))
        return wrapper

    @property
    def core(self) -> TwoStageRetriever:
        return self._core

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[Document]:
        [result] = self._core.search([query], self.k if k is None else k)  # validates both
        return [scored_document(self._core.passages[i], s, self._originals.get(i))
                for i, s in zip(result.ids, result.scores)]

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: int | None = None) -> list[Document]:
        return await asyncio.to_thread(self._get_relevant_documents, query,
                                       run_manager=run_manager.get_sync(), k=k)
