"""LlamaIndex integration (extra ``llama-index``): thin shells over the core.

- :class:`InvarRetriever` (``BaseRetriever``): two-stage Invar search over a set of nodes;
- :class:`InvarReranker` (``BaseNodePostprocessor``): the Invar scorer over any retriever's
  nodes;
- :class:`InvarEmbedding` (``BaseEmbedding``): stage-1 (MiniLM) vectors for any vector store;
- :class:`InvarLLM` (``CustomLLM``): the generator adapter, for query engines;
- :class:`InvarSynthesizer` (``BaseSynthesizer``): a query engine's answer step that may
  decline when the evidence is weak (``declined``, ``confidence`` in the response metadata);
- :func:`qa_template`: a trained prompt as a QA template for any LLM (e.g. ``OpenAILike``
  pointed at ``invar-rag serve``).
"""

from __future__ import annotations

from .._optional import require

require("llama_index.core", "llama-index")

from .embedding import InvarEmbedding  # noqa: E402
from .llm import InvarLLM, qa_template  # noqa: E402
from .postprocessor import InvarReranker  # noqa: E402
from .retriever import InvarRetriever  # noqa: E402
from .synthesizer import InvarSynthesizer  # noqa: E402

__all__ = ["InvarEmbedding", "InvarLLM", "InvarReranker", "InvarRetriever", "InvarSynthesizer",
           "qa_template"]
