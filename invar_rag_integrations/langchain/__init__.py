"""LangChain integration (extra ``langchain``): thin shells over the core.

- :class:`InvarRetriever` (``BaseRetriever``): Invar-RAG's retrieval over your documents;
- :class:`InvarEmbeddings` (``Embeddings``): asymmetric query / passage vectors for any vector
  store;
- :class:`InvarLLM` (``LLM``): the generator adapter;
- :func:`build_rag_chain`: retriever -> prompt -> LLM as one Runnable that returns the answer
  with its source documents.
"""

from __future__ import annotations

from .._optional import require

require("langchain_core", "langchain")

from .chain import build_rag_chain  # noqa: E402
from .embeddings import InvarEmbeddings  # noqa: E402
from .llm import InvarLLM  # noqa: E402
from .retriever import InvarRetriever  # noqa: E402

__all__ = ["InvarEmbeddings", "InvarLLM", "InvarRetriever", "build_rag_chain"]
