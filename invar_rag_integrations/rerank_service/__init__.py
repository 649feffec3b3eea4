"""The rerank service (extra ``serve``): the Invar reranker behind the Cohere / Jina rerank API,
so the reranker clients users already have (LlamaIndex ``CohereRerank`` / ``JinaRerank``,
LangChain ``CohereRerank``) can call it with a ``base_url``.

- :mod:`.protocol`: request and response models;
- :mod:`.settings`: :class:`ServiceSettings` (limits, API key, batching);
- :mod:`.batcher`: :class:`RequestBatcher`, requests gathered across clients into one scorer
  call in a worker thread;
- :mod:`.handler`: :class:`RerankHandler`, the one object behind the routes (limits, scoring,
  answers, a log line per request);
- :mod:`.app`: :func:`create_app`, thin FastAPI routes over it;
- :mod:`.server`: :func:`serve_rerank` (``invar-rag serve SYSTEM --rerank``) and
  :class:`RerankServer`, the same as a managed child process.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RequestBatcher", "RerankServer", "ServiceSettings", "create_app", "serve_rerank"]


def __getattr__(name: str) -> Any:
    """Import on first use, so the command line reads the settings without the web stack."""
    if name == "ServiceSettings":
        from .settings import ServiceSettings

        return ServiceSettings
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .._optional import require

    for module in ("fastapi", "uvicorn"):
        require(module, "serve")
    if name == "create_app":
        from .app import create_app as found
    elif name == "RequestBatcher":
        from .batcher import RequestBatcher as found
    elif name == "RerankServer":
        from .server import RerankServer as found
    else:
        from .server import serve_rerank as found
    return found
