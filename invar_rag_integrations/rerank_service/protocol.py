"""The rerank API's request and response models: the Cohere (v1, v2) and Jina rerank schema,
as vLLM and the Cohere / Jina clients speak it.

``POST /v1/rerank``, ``/v2/rerank`` and ``/rerank`` take a :class:`RerankRequest` and answer a
:class:`RerankResponse`; ``/rerank`` also takes Hugging Face text-embeddings-inference's
:class:`TEIRerankRequest` (``texts`` instead of ``documents``) and answers it as TEI does, a
list of :class:`TEIRank`; ``GET /v1/models`` answers a :class:`ModelList`. Fields the clients
send that the Invar scorer has no use for (``max_tokens_per_doc``, ``priority``, ``rank_fields``)
are accepted and ignored: the scorer reads each document whole, in windows.

Every ``relevance_score`` (and TEI's ``score``) is the calibrated probability that the document
holds an answer to the query, in [0, 1], as Cohere and TEI return relevance; ``raw_scores``
asks for the fused Invar score beside it (TEI's ``raw_scores: true`` answers with it).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RerankDocument(BaseModel):
    """A document given (or returned) as an object with its text."""

    model_config = ConfigDict(extra="ignore")

    text: str


class RerankRequest(BaseModel):
    """One query and the documents to rank for it.

    ``top_n``: how many results to return, best first (``None`` or 0: all documents; more than
    there are documents: all of them). ``score_threshold``: leave out documents whose relevance
    probability is below it (``None``: none are left out). ``raw_scores``: also return each
    result's fused Invar score as ``raw_score``.
    """

    model_config = ConfigDict(extra="ignore")

    query: str = Field(min_length=1)
    documents: list[str | RerankDocument]
    model: str | None = None
    top_n: int | None = Field(default=None, ge=0)
    return_documents: bool = True
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    raw_scores: bool = False

    def texts(self) -> list[str]:
        """The documents' texts, in the order given."""
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankResult(BaseModel):
    """One ranked document: its position in the request, the probability that it holds an
    answer to the query and, when asked (``raw_scores``), its fused Invar score (-1e30 for a
    document the early stop left unread: it has none)."""

    index: int
    relevance_score: float = Field(ge=0.0, le=1.0)
    document: RerankDocument | None = None
    raw_score: float | None = None


class RerankUsage(BaseModel):
    """What the scorer read: each document's tokens, windows included, plus the question's
    tokens once per window and once with no passage (what the relevance probability reads;
    ``total_tokens``), over ``documents`` documents."""

    documents: int
    total_tokens: int


class RerankResponse(BaseModel):
    """Results sorted best first."""

    id: str = Field(default_factory=lambda: f"rerank-{uuid.uuid4().hex}")
    model: str
    results: list[RerankResult]
    usage: RerankUsage


class TEIRerankRequest(BaseModel):
    """text-embeddings-inference's rerank request: the query and the ``texts`` to rank; scores
    are relevance probabilities, or the fused Invar scores with ``raw_scores`` (``truncate``
    and ``truncation_direction`` are accepted and ignored: documents are read whole, in
    windows)."""

    model_config = ConfigDict(extra="ignore")

    query: str = Field(min_length=1)
    texts: list[str]
    return_text: bool = False
    raw_scores: bool = False
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    def as_rerank(self) -> RerankRequest:
        """The same request in the Cohere / Jina schema (every text ranked)."""
        return RerankRequest(query=self.query, documents=list(self.texts),
                             return_documents=self.return_text, raw_scores=self.raw_scores,
                             score_threshold=self.score_threshold)


class TEIRank(BaseModel):
    """One ranked text as text-embeddings-inference answers it."""

    index: int
    score: float
    text: str | None = None


def tei_ranks(answer: RerankResponse) -> list[TEIRank]:
    """A Cohere / Jina answer as text-embeddings-inference gives it: every text's index and
    score (the raw fused score when the request asked for ``raw_scores``), best first."""
    return [TEIRank(index=r.index, score=r.relevance_score if r.raw_score is None
                    else r.raw_score, text=r.document.text if r.document else None)
            for r in answer.results]


class ErrorBody(BaseModel):
    """The body of an error answer: what went wrong, naming the limit or the field."""

    detail: str


class ValidationErrorBody(BaseModel):
    """A 422 answer: the request's fields that do not fit the schema (a list), or a value the
    scorer cannot take, e.g. a query without words (a message)."""

    detail: list[dict[str, Any]] | str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "invar-rag"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
