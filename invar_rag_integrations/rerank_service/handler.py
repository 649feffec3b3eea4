"""The one object behind the rerank routes: it owns the core reranker and the request batcher,
checks a request against the limits, has it scored and answers it in the protocol's models,
logging one line per request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException, Request

from ..invar.early_stop import UNSCORED
from ..invar.reranker import Stage2Reranker
from ..retrieval.base import check_text
from .batcher import BatcherClosed, QueueFull, RequestBatcher, ScoringFailed
from .protocol import (
    ModelCard,
    ModelList,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
)
from .settings import ServiceSettings

LOG = logging.getLogger("invar_rag_integrations.rerank_service")
UNSCORED_IN_JSON = -1e30  # JSON has no -inf: the raw score of a document left unread


class RerankHandler:
    """Rerank requests over ``reranker``.

    Args:
        reranker: The core Invar reranker.
        settings: Limits, batching and the early-stop policy.
        batcher: The request batcher (default: one over :meth:`score` with the settings'
            batching).
    """

    def __init__(self, reranker: Stage2Reranker, settings: ServiceSettings,
                 batcher: RequestBatcher | None = None):
        self.reranker, self.settings = reranker, settings
        self.batcher = batcher or RequestBatcher(self.score, settings.max_batch_pairs,
                                                 settings.max_wait_ms, settings.max_queued_pairs)
        if settings.passage_cache_mb:
            reranker.use_passage_cache(settings.passage_cache_mb)

    def score(self, queries: list[str], documents: list[list[str]],
              top_n: list[int | None]) -> list[tuple[list[tuple[int, float, float]], int, int]]:
        """The batcher's call: per query, its ranked ``(index, relevance probability, s)``
        (cut to ``top_n``), the tokens the LM read and the documents it read (as the
        early-stop policy says)."""
        found = self.reranker.rerank_reading(queries, documents,
                                             self.settings.read_first or None,
                                             self.settings.stop_margin)
        return [([(i, p, s) for (i, p), s in zip(r.ranked[:n], r.fused)], r.tokens,
                 sum(s != UNSCORED for s in r.fused)) for r, n in zip(found, top_n)]

    def health(self) -> dict[str, Any]:
        return {"status": "ok", **self.reranker.status(),
                "queued_pairs": self.batcher.queued_pairs,
                "scoring_pairs": self.batcher.scoring_pairs, **self.batcher.counts}

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.settings.model_name)])

    async def rerank(self, body: RerankRequest, request: Request) -> RerankResponse:
        """One request, answered in the Cohere / Jina schema and logged."""
        started, status, documents, pairs = time.perf_counter(), 500, len(body.documents), 0
        try:
            answer, pairs = await self._rerank(body, request)
            status = 200
            return answer
        except HTTPException as err:
            status = err.status_code
            raise
        finally:
            LOG.info("%s %d documents=%d pairs_read=%d latency_ms=%.1f", request.url.path,
                     status, documents, pairs, 1000 * (time.perf_counter() - started))

    async def _rerank(self, body: RerankRequest,
                      request: Request) -> tuple[RerankResponse, int]:
        settings = self.settings
        if body.model not in (None, settings.model_name):
            raise HTTPException(404, f"model {body.model!r} is not served here; ask for "
                                     f"{settings.model_name!r} (GET /v1/models)")
        self.check_limits(body)
        texts = body.texts()
        top_n = min(body.top_n, len(texts)) if body.top_n else None
        ranked, tokens, pairs = [], 0, 0
        if texts:
            ranked, tokens, pairs = await self._scored(request, body.query, texts, top_n)
        threshold = body.score_threshold
        results = [RerankResult(index=i, relevance_score=probability,
                                document=RerankDocument(text=texts[i])
                                if body.return_documents else None,
                                raw_score=max(fused, UNSCORED_IN_JSON) if body.raw_scores
                                else None)
                   for i, probability, fused in ranked
                   if threshold is None or probability >= threshold]
        return RerankResponse(model=settings.model_name, results=results,
                              usage=RerankUsage(documents=len(texts), total_tokens=tokens)), pairs

    def check_limits(self, body: RerankRequest) -> None:
        """413 for a request over a size limit, 422 for a value the scorer cannot take (an
        :class:`ErrorBody`); each message names the limit or the field."""
        settings = self.settings
        if len(body.documents) > settings.max_documents:
            raise HTTPException(413, f"{len(body.documents)} documents exceed max_documents = "
                                     f"{settings.max_documents}")
        if body.top_n is not None and body.top_n > settings.max_documents:
            raise HTTPException(422, f"top_n = {body.top_n} exceeds max_documents = "
                                     f"{settings.max_documents}")
        if len(body.query) > settings.max_query_chars:
            raise HTTPException(413, f"the query's {len(body.query)} characters exceed "
                                     f"max_query_chars = {settings.max_query_chars}")
        for i, text in enumerate(body.texts()):
            if len(text) > settings.max_document_chars:
                raise HTTPException(413, f"documents[{i}] has {len(text)} characters, over "
                                         f"max_document_chars = {settings.max_document_chars}")
        try:
            check_text(body.query)
        except ValueError as err:
            raise HTTPException(422, f"query: {err}") from None

    async def _scored(self, request: Request, query: str, texts: Sequence[str],
                      top_n: int | None) -> Any:
        """The batcher's answer for one request, or nothing when its client disconnects first
        (its pairs leave the queue)."""
        job = asyncio.ensure_future(self.batcher.submit(query, list(texts), top_n))
        gone = asyncio.ensure_future(_client_gone(request))
        await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            raise HTTPException(499, "the client closed the request")
        gone.cancel()
        try:
            return job.result()
        except QueueFull as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from None
        except BatcherClosed as err:
            raise HTTPException(503, str(err)) from None
        except ScoringFailed as err:
            raise HTTPException(500, str(err)) from None


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (its body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
