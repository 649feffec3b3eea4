"""The rerank service's settings: limits, API key and batching (no web stack imported, so the
command line can name and check them without the ``serve`` extra, before a model loads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..invar.early_stop import STOP_MARGIN, check_policy
from .batcher import check_batching

API_KEY_VARIABLE = "INVAR_RAG_API_KEY"  # read by `invar-rag serve` when --api-key is not given
SCORER_ENGINES = ("hf", "vllm")  # what reads the pairs: the HF model in torch, or a vLLM engine


@dataclass
class ServiceSettings:
    """What the service accepts and how it batches.

    Attributes:
        model_name: The model name clients ask for (``model`` may also be left out).
        api_key: Clients must send ``Authorization: Bearer <api_key>`` (``None``: no key).
        max_documents: Documents per request (413 beyond).
        max_document_chars: Characters per document (413 beyond); longer nodes than the
            scorer's window are read in windows up to its ``max_windows``.
        max_query_chars: Characters of the query (413 beyond).
        max_body_bytes: Size of a request body (413 beyond, before it is read whole).
        max_batch_pairs, max_wait_ms, max_queued_pairs: Cross-request batching
            (:class:`RequestBatcher`); ``max_batch_pairs = 1`` turns it off.
        passage_cache_mb: Megabytes of passage key/value states kept, so a document scored
            again costs only the query's tokens (``InvarScorer.use_passage_cache``; a float32
            scorer only); 0: no cache.
        read_first, stop_margin: Early stop (``Stage2Reranker.rerank``): read a request's
            first ``read_first`` documents (in the order sent), the rest only while the
            leader's fused score beats the runner-up's by less than ``stop_margin``; an unread
            document's probability comes from its cosine and length. 0: read every document.
    """

    model_name: str = "invar-reranker"
    api_key: str | None = None
    max_documents: int = 1000
    max_document_chars: int = 32_000
    max_query_chars: int = 4_000
    max_body_bytes: int = 64 * 2**20
    max_batch_pairs: int = 64
    max_wait_ms: float = 5.0
    max_queued_pairs: int = 4096
    passage_cache_mb: float = 0.0
    read_first: int = 0
    stop_margin: float = STOP_MARGIN

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_document_chars", "max_query_chars",
                     "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.passage_cache_mb < 0:
            raise ValueError(f"passage_cache_mb must be >= 0, got {self.passage_cache_mb}")
        if not self.model_name.strip():
            raise ValueError("model_name must be a non-empty string")
        check_batching(self.max_batch_pairs, self.max_wait_ms, self.max_queued_pairs)
        if self.read_first:
            check_policy(self.read_first, self.stop_margin)


FLAG_HELP = {
    "model_name": "the model name clients ask for",
    "api_key": "clients must send Authorization: Bearer KEY (default: $INVAR_RAG_API_KEY, else "
               "no key; the variable keeps the key off the command line)",
    "max_documents": "documents per request (413 beyond)",
    "max_document_chars": "characters per document (413 beyond)",
    "max_query_chars": "characters of the query (413 beyond)",
    "max_body_bytes": "bytes of a request body (413 beyond)",
    "max_batch_pairs": "query-document pairs per scorer call, gathered across requests "
                       "(1: no batching)",
    "max_wait_ms": "longest wait for more requests to join a batch",
    "max_queued_pairs": "pairs allowed to wait (503 beyond)",
    "passage_cache_mb": "MB of passage states kept so a document read again costs only the "
                        "query's tokens (needs --precision float32; 0: off)",
    "read_first": "early stop: read a request's first N documents (in the order sent), the rest "
                  "only while the leader is not clear by --stop-margin (0: read every one)",
    "stop_margin": "early stop: the score lead (nats) at which the leader is clear",
}


def add_settings_flags(parser: Any) -> None:
    """One ``--flag`` per :class:`ServiceSettings` field (``--max-documents``, ...)."""
    for field in fields(ServiceSettings):
        given = field.default is not None
        parser.add_argument("--" + field.name.replace("_", "-"),
                            type=type(field.default) if given else str,
                            help=FLAG_HELP[field.name] + (f" (default: {field.default})"
                                                          if given else ""))


def settings_flags(settings: ServiceSettings) -> list[str]:
    """The flags that give ``settings``."""
    flags: list[str] = []
    for name, value in asdict(settings).items():
        if value is not None:
            flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


def given_settings(args: Any) -> dict[str, Any]:
    """The :class:`ServiceSettings` fields set by parsed flags."""
    return {f.name: getattr(args, f.name) for f in fields(ServiceSettings)
            if getattr(args, f.name, None) is not None}


def settings_from_args(args: Any) -> ServiceSettings:
    """:class:`ServiceSettings` from parsed flags (unset ones keep their defaults)."""
    return ServiceSettings(**given_settings(args))
