"""The one way texts become coarse vectors: a query or a passage, each with the encoder's own
prompt (the ``prompts`` of its sentence-transformers folder: E5's ``query: `` and
``passage: ``, BGE's query instruction; MiniLM has none), normalised, float32."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

QUERY, PASSAGE = "query", "passage"
KINDS = (QUERY, PASSAGE)
# the prompt names sentence-transformers' encode_document tries, in its order
PASSAGE_PROMPTS = ("document", "passage", "corpus")


def encode(encoder: Any, texts: Sequence[str], kind: str, batch_size: int = 64,
           show_progress: bool = False) -> np.ndarray:
    """Normalised float32 vectors ``[N, d]`` of ``texts`` read as ``kind`` (``query`` or
    ``passage``), through the encoder's ``encode_query`` / ``encode_document``.

    Raises:
        ValueError: An unknown ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not texts:
        return np.zeros((0, encoder.get_embedding_dimension()), np.float32)
    method = encoder.encode_query if kind == QUERY else encoder.encode_document
    return np.asarray(method(list(texts), prompt_name=prompt_name(encoder, kind),
                             batch_size=batch_size, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=show_progress),
                      dtype=np.float32)


def prompt_name(encoder: Any, kind: str) -> str | None:
    """The name of the encoder's prompt for a ``kind`` text: the first that is not empty
    (sentence-transformers fills in an empty ``document`` prompt, which would hide E5's
    ``passage``), else ``None`` (the encoder's default prompt, if any)."""
    prompts = getattr(encoder, "prompts", None) or {}
    names = (QUERY,) if kind == QUERY else PASSAGE_PROMPTS
    return next((n for n in names if prompts.get(n)), None)


def prompt_of(encoder: Any, kind: str) -> str:
    """The text the encoder puts before a ``kind`` text ("" when none)."""
    prompts = getattr(encoder, "prompts", None) or {}
    name = prompt_name(encoder, kind) or getattr(encoder, "default_prompt_name", None)
    return prompts.get(name, "") if name else ""


def text_room(encoder: Any, kind: str) -> int:
    """Word pieces of a ``kind`` text the encoder reads: its limit less the special tokens
    around the text and its prompt."""
    prompt = prompt_of(encoder, kind)
    taken = len(encoder.tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt \
        else 0
    return encoder.max_seq_length - 2 - taken  # [CLS] and [SEP]
