"""On-disk cache of corpus embeddings keyed by (encoder identity, corpus content) hashes.

Embeddings are computed in chunks that are written as they finish, so an interrupted pass
(a kill at 90% of a long corpus) resumes from the chunks it kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..paths import cache_dir


def texts_hash(texts: Sequence[str]) -> str:
    """Order-sensitive SHA-256 over the exact texts that are encoded."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".emb-", suffix=".npy", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    Path(tmp).replace(path)


def cached_embeddings(
    texts: Sequence[str],
    model_identity: str,
    encode: Callable[[list[str]], np.ndarray],
    use_cache: bool = True,
    chunk_size: int = 1024,
    show_progress: bool = False,
) -> tuple[np.ndarray, bool]:
    """Return ``(embeddings, was_cached)`` for ``texts``, computing and storing them on a miss.

    Args:
        texts: Texts in corpus order.
        model_identity: A stable identity of the encoder (e.g. its weights' hash).
        encode: Computes float32 embeddings for a list of texts.
        use_cache: ``False`` always recomputes and writes nothing.
        chunk_size: Texts per chunk (the unit a resumed run keeps).
        show_progress: A progress bar over the texts still to encode.
    """
    texts = list(texts)
    key = hashlib.sha256(f"{model_identity}|{texts_hash(texts)}".encode()).hexdigest()[:32]
    folder = cache_dir() / "embeddings"
    path = folder / f"{key}.npy"
    if use_cache and path.is_file():
        array = np.load(path, allow_pickle=False)
        if array.shape[0] == len(texts):
            return array, True
    parts = folder / f"{key}.parts"
    if use_cache:
        parts.mkdir(parents=True, exist_ok=True)
    chunks = []
    with tqdm(total=len(texts), desc="embed", unit="text", disable=not show_progress) as bar:
        for number, start in enumerate(range(0, len(texts), chunk_size)):
            stop = min(start + chunk_size, len(texts))
            file = parts / f"chunk-{number:06d}.npy"
            chunk = np.load(file, allow_pickle=False) if use_cache and file.is_file() else None
            if chunk is None or chunk.shape[0] != stop - start:
                chunk = np.ascontiguousarray(encode(texts[start:stop]), dtype=np.float32)
                if use_cache:
                    _save_atomic(file, chunk)
            chunks.append(chunk)
            bar.update(stop - start)
    array = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    if use_cache:
        _save_atomic(path, array)
        shutil.rmtree(parts, ignore_errors=True)
    return array, False
