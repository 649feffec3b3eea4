"""``InvarReranker``: the Invar scorer (stage 2) as a LangChain document compressor, like
``CrossEncoderReranker``: ``ContextualCompressionRetriever(base_retriever=any,
base_compressor=InvarReranker(...))``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, PrivateAttr

from ..invar.calibration import check_threshold
from ..invar.checks import stage2_of
from ..invar.early_stop import STOP_MARGIN, check_policy
from ..invar.reranker import Stage2Reranker
from ..invar.two_stage import TwoStageRetriever
from ..retrieval.base import check_k, check_text
from .retriever import document_id, document_passage


class InvarReranker(BaseDocumentCompressor):
    """Keep the ``top_n`` documents by the Invar retriever's ranking, each with
    ``metadata['relevance_score']``: the probability that it holds an answer to the query (in
    [0, 1], calibrated), as ``CohereRerank`` sets it.

    Args:
        retriever: The core Invar retriever (its stage 2 is used; no index needed) or a core
            ``InvarReranker``.
        top_n: Documents to keep.
        read_first, stop_margin: Early stop: read the first ``read_first`` documents (in the
            retriever's order), the rest only while the leader is not clear by
            ``stop_margin`` (``Stage2Reranker.rerank``); an unread document's probability
            comes from its cosine and length. ``None``: read every document.
        score_threshold: Leave out documents whose probability is below it (``None``: keep
            the ``top_n``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    top_n: int = 3
    read_first: int | None = None
    stop_margin: float = STOP_MARGIN
    score_threshold: float | None = None
    _core: Stage2Reranker = PrivateAttr()

    def __init__(self, *, retriever: TwoStageRetriever | Stage2Reranker, top_n: int = 3,
                 read_first: int | None = None, stop_margin: float = STOP_MARGIN,
                 score_threshold: float | None = None):
        if read_first is not None:
            check_policy(read_first, stop_margin)
        super().__init__(top_n=check_k(top_n, "top_n"), read_first=read_first,
                         stop_margin=stop_margin, score_threshold=check_threshold(score_threshold))
        self._core = stage2_of(retriever)

    @classmethod
    def from_pretrained(cls, system_dir: str | os.PathLike[str], **kwargs: Any) -> InvarReranker:
        return cls(retriever=TwoStageRetriever.from_pretrained(system_dir, index=None,
                                                                show_progress=False), **kwargs)

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        query = check_text(query)
        documents = list(documents)
        passages = [document_passage(d, document_id(d)) for d in documents]
        kept = []
        for index, score in self._core.rerank(query, passages, self.top_n, self.read_first,
                                              self.stop_margin):
            if self.score_threshold is not None and score < self.score_threshold:
                continue
            original = documents[index]
            kept.append(Document(page_content=original.page_content, id=original.id,
                                 metadata={**original.metadata, "relevance_score": score}))
        return kept
