"""The rerank service's ASGI application: thin FastAPI handlers over the core
``InvarReranker``, with limits, an optional API key and cross-request batching.

Relevance scores are the fused Invar score ``s(q, d)`` (the scorer's length-normalised question
log-likelihood fused with the coarse cosine, ``retrieval/invar_retriever.py``): real numbers,
higher is better, comparable between the documents of one query, not a probability in [0, 1].
A document without text, or left unread by early stop (``read_first``), scores
``EMPTY_RELEVANCE`` (JSON has no -inf), below every document read.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..retrieval.base import check_text
from ..retrieval.early_stop import STOP_MARGIN, UNREAD_SCORE
from ..retrieval.invar_retriever import InvarReranker
from .batcher import BatcherClosed, QueueFull, RequestBatcher, ScoringFailed
from .protocol import (
    ModelCard,
    ModelList,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    TEIRank,
    TEIRerankRequest,
)
from .settings import ServiceSettings

RERANK_PATHS = ("/v1/rerank", "/v2/rerank")  # and /rerank, which also speaks TEI's schema
EMPTY_RELEVANCE = -1e30
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None,
                              Depends(HTTPBearer(auto_error=False))]


def score_reranker(reranker: InvarReranker, read_first: int | None = None,
                   stop_margin: float = STOP_MARGIN):
    """The batcher's scorer call over the core reranker (reading as the early-stop policy
    says: :meth:`InvarReranker.rerank`): per query, its ranked ``(index, score)`` pairs and the
    tokens the LM read."""

    def score(queries: list[str], documents: list[list[str]],
              top_n: list[int | None]) -> list[tuple[list[tuple[int, float]], int]]:
        ranked = reranker.rerank_batch(queries, documents, [None] * len(queries), read_first,
                                       stop_margin)
        return [(r[:n], reranker.scorer.tokens_read(q, [d[i] for i, s in r
                                                        if s != UNREAD_SCORE]))
                for r, q, d, n in zip(ranked, queries, documents, top_n)]

    return score


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it is read
    whole (by its Content-Length, or while it streams)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = JSONResponse(
            {"detail": f"the request body exceeds max_body_bytes = {self.limit}"}, 413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_large(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await too_large(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (its body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _check_limits(body: RerankRequest, settings: ServiceSettings) -> None:
    """413 for a request over a size limit, 422 for a value the scorer cannot take; each
    message names the limit or the field."""
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


def create_app(reranker: InvarReranker, settings: ServiceSettings | None = None,
               batcher: RequestBatcher | None = None) -> FastAPI:
    """The rerank service over ``reranker``.

    Args:
        reranker: The core Invar reranker (e.g. ``InvarRetriever.from_pretrained(...)
            .reranker``).
        settings: Limits, key and batching (defaults: :class:`ServiceSettings`).
        batcher: The request batcher (default: one over ``reranker`` with the settings'
            batching); it is closed, after the waiting requests are answered, when the app
            shuts down.
    """
    settings = settings or ServiceSettings()
    batcher = batcher or RequestBatcher(
        score_reranker(reranker, settings.read_first or None, settings.stop_margin),
        settings.max_batch_pairs, settings.max_wait_ms, settings.max_queued_pairs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title="Invar rerank", lifespan=lifespan,
                  description="Cohere / Jina rerank API over the Invar scorer")
    app.state.batcher = batcher
    if settings.passage_cache_mb:
        reranker.scorer.use_passage_cache(settings.passage_cache_mb)

    def authorised(credentials: BearerCredentials) -> None:
        if settings.api_key is None:
            return
        if credentials is None or not secrets.compare_digest(
                credentials.credentials.encode(), settings.api_key.encode()):
            raise HTTPException(401, "a valid API key is required (Authorization: Bearer KEY)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    def health() -> dict[str, Any]:
        counts, cache = reranker.scorer.window_counts, reranker.scorer.passage_cache
        found = {"status": "ok", "scorer_engine": "hf" if reranker.scorer.engine is None
                 else "vllm", "queued_pairs": batcher.queued_pairs,
                 "scoring_pairs": batcher.scoring_pairs, **batcher.counts,
                 "nodes_read_in_part": counts.get("nodes_read_in_part", 0)}
        if cache is not None:
            found["passage_cache"] = {**cache.counts, "passages": len(cache), "bytes": cache.bytes}
        return found

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_name)])

    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
        if body.model not in (None, settings.model_name):
            raise HTTPException(404, f"model {body.model!r} is not served here; ask for "
                                     f"{settings.model_name!r} (GET /v1/models)")
        _check_limits(body, settings)
        texts = body.texts()
        top_n = min(body.top_n, len(texts)) if body.top_n else None
        ranked, tokens = [], 0
        if texts:
            ranked, tokens = await _scored(batcher, request, body.query, texts, top_n)
        results = [RerankResult(index=i, relevance_score=max(score, EMPTY_RELEVANCE),
                                document=RerankDocument(text=texts[i])
                                if body.return_documents else None)
                   for i, score in ranked]
        return RerankResponse(model=settings.model_name, results=results,
                              usage=RerankUsage(documents=len(texts), total_tokens=tokens))

    async def rerank_or_tei(body: RerankRequest | TEIRerankRequest,
                            request: Request) -> RerankResponse | list[TEIRank]:
        """``/rerank``: the Cohere / Jina schema, or text-embeddings-inference's (``texts``),
        answered as TEI does: every text's index and score, best first."""
        if isinstance(body, RerankRequest):
            return await rerank(body, request)
        answer = await rerank(body.as_rerank(), request)
        return [TEIRank(index=r.index, score=r.relevance_score,
                        text=r.document.text if r.document else None) for r in answer.results]

    for path in RERANK_PATHS:
        app.post(path, dependencies=[Depends(authorised)], response_model_exclude_none=True,
                 response_model=RerankResponse)(rerank)
    app.post("/rerank", dependencies=[Depends(authorised)], response_model_exclude_none=True,
             response_model=RerankResponse | list[TEIRank])(rerank_or_tei)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


async def _scored(batcher: RequestBatcher, request: Request, query: str, texts: Sequence[str],
                  top_n: int | None) -> Any:
    """The batcher's answer for one request, or nothing when its client disconnects first
    (its pairs leave the queue)."""
    job = asyncio.ensure_future(batcher.submit(query, list(texts), top_n))
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
