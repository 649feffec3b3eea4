"""The rerank service (extra ``serve``): the Invar reranker behind the Cohere / Jina rerank API,
so the reranker clients users already have (LlamaIndex ``CohereRerank`` / ``JinaRerank``,
LangChain ``CohereRerank``) can call it with a ``base_url``.

- :mod:`.protocol`: request and response models;
- :mod:`.settings`: :class:`ServiceSettings` (limits, API key, batching);
- :mod:`.batcher`: :class:`RequestBatcher`, requests gathered across clients into one scorer
  call in a worker thread;
- :mod:`.app`: :func:`create_app`, the FastAPI application;
- :mod:`.server`: :func:`serve_rerank` (``invar-rag serve SYSTEM --rerank``) and
  :class:`RerankServer`, the same as a managed child process.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"create_app": "app", "RequestBatcher": "batcher", "RerankServer": "server",
            "serve_rerank": "server", "ServiceSettings": "settings"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import on first use, so the command line reads the settings without the web stack."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .._optional import require

    for module in ("fastapi", "uvicorn"):
        require(module, "serve")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
