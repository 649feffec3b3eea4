"""The rerank service's ASGI application: thin FastAPI routes over one
:class:`~.handler.RerankHandler`, with a body limit and an optional API key.

Relevance scores are calibrated probabilities in [0, 1] that the document holds an answer to
the query (``invar/calibration.py``), comparable across queries, so clients can threshold on
them; a document left unread by the early stop (``read_first``) gets its probability from its
cosine and length, a document without text 0. ``raw_scores`` adds the fused Invar score
``s(q, d)`` (``invar/fusion.py``; ``UNSCORED_IN_JSON``, -1e30, where unread).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..invar.reranker import Stage2Reranker
from .batcher import RequestBatcher
from .handler import RerankHandler
from .protocol import (
    ErrorBody,
    ModelList,
    RerankRequest,
    RerankResponse,
    TEIRank,
    TEIRerankRequest,
    ValidationErrorBody,
    tei_ranks,
)
from .settings import ServiceSettings

RERANK_PATHS = ("/v1/rerank", "/v2/rerank")  # and /rerank, which also speaks TEI's schema
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None,
                              Depends(HTTPBearer(auto_error=False))]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "The API key is missing or wrong"},
    404: {"model": ErrorBody, "description": "Another model was asked for"},
    413: {"model": ErrorBody, "description": "Over a size limit (body, documents, characters)"},
    422: {"model": ValidationErrorBody, "description": "A field that does not fit the schema, "
                                                      "or a value the scorer cannot take"},
    499: {"model": ErrorBody, "description": "The client closed the request"},
    500: {"model": ErrorBody, "description": "Scoring failed"},
    503: {"model": ErrorBody, "description": "The queue is full (Retry-After) or the service "
                                             "is shutting down"},
}


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


def create_app(reranker: Stage2Reranker, settings: ServiceSettings | None = None,
               batcher: RequestBatcher | None = None) -> FastAPI:
    """The rerank service over ``reranker``.

    Args:
        reranker: The core Invar reranker (e.g. ``TwoStageRetriever.from_pretrained(...)
            .reranker``).
        settings: Limits, key and batching (defaults: :class:`ServiceSettings`).
        batcher: The request batcher (default: the handler's, with the settings' batching);
            it is closed, after the waiting requests are answered, when the app shuts down.
    """
    settings = settings or ServiceSettings()
    handler = RerankHandler(reranker, settings, batcher)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(handler.batcher.close)

    app = FastAPI(title="Invar rerank", lifespan=lifespan,
                  description="Cohere / Jina / text-embeddings-inference rerank API over the "
                              "Invar scorer")
    app.state.batcher = handler.batcher  # the server reports its counts on shutdown

    def authorised(credentials: BearerCredentials) -> None:
        if settings.api_key is None:
            return
        if credentials is None or not secrets.compare_digest(
                credentials.credentials.encode(), settings.api_key.encode()):
            raise HTTPException(401, "a valid API key is required (Authorization: Bearer KEY)",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = {"dependencies": [Depends(authorised)], "response_model_exclude_none": True}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return handler.health()

    @app.get("/v1/models", dependencies=[Depends(authorised)],
             responses={401: ERRORS[401]})
    def models() -> ModelList:
        return handler.models()

    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
        return await handler.rerank(body, request)

    async def rerank_or_tei(body: RerankRequest | TEIRerankRequest,
                            request: Request) -> RerankResponse | list[TEIRank]:
        """``/rerank``: the Cohere / Jina schema, or text-embeddings-inference's (``texts``),
        answered as TEI does."""
        if isinstance(body, RerankRequest):
            return await handler.rerank(body, request)
        return tei_ranks(await handler.rerank(body.as_rerank(), request))

    for path in RERANK_PATHS:
        app.post(path, response_model=RerankResponse, responses=ERRORS, **guarded)(rerank)
    app.post("/rerank", response_model=RerankResponse | list[TEIRank], responses=ERRORS,
             **guarded)(rerank_or_tei)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
