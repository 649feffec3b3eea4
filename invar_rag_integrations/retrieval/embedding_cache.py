"""On-disk cache of corpus embeddings keyed by (encoder identity, corpus content) hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..paths import cache_dir


def texts_hash(texts: Sequence[str]) -> str:
    """Order-sensitive SHA-256 over the exact texts that are encoded."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cached_embeddings(
    texts: Sequence[str],
    model_identity: str,
    encode: Callable[[list[str]], np.ndarray],
    use_cache: bool = True,
) -> tuple[np.ndarray, bool]:
    """Return ``(embeddings, was_cached)`` for ``texts``, computing and storing them on a miss.

    Args:
        texts: Texts in corpus order.
        model_identity: A stable identity of the encoder (e.g. its weights' hash).
        encode: Computes float32 embeddings for a list of texts.
        use_cache: ``False`` always recomputes and does not write.
    """
    key = hashlib.sha256(f"{model_identity}|{texts_hash(texts)}".encode()).hexdigest()[:32]
    path = cache_dir() / "embeddings" / f"{key}.npy"
    if use_cache and path.is_file():
        array = np.load(path, allow_pickle=False)
        if array.shape[0] == len(texts):
            return array, True
    array = np.ascontiguousarray(encode(list(texts)), dtype=np.float32)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".emb-", suffix=".npy", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        Path(tmp).replace(path)
    return array, False
