"""LangChain integration (extra ``langchain``): thin shells over the core.

- :class:`InvarRetriever` (``BaseRetriever``): two-stage Invar retrieval over your documents;
- :class:`InvarReranker` (``BaseDocumentCompressor``): the Invar scorer over any retriever's
  documents (``ContextualCompressionRetriever``);
- :class:`InvarEmbeddings` (``Embeddings``): stage-1 (MiniLM) vectors for any vector store;
- :class:`InvarLLM` (``LLM``): the generator adapter;
- :func:`build_rag_chain`: retriever -> prompt -> LLM as one Runnable that returns the answer
  with its source documents (and, when abstaining, whether it declined).
"""

from __future__ import annotations

from .._optional import require

require("langchain_core", "langchain")

from .chain import build_rag_chain  # noqa: E402
from .compressor import InvarReranker  # noqa: E402
from .embeddings import InvarEmbeddings  # noqa: E402
from .llm import InvarLLM  # noqa: E402
from .retriever import InvarRetriever  # noqa: E402

__all__ = ["InvarEmbeddings", "InvarLLM", "InvarReranker", "InvarRetriever", "build_rag_chain"]
