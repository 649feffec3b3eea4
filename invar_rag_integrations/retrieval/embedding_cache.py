"""On-disk cache of embeddings, keyed by the encoder's identity and each text's content.

Every text's vector is stored once per encoder (shards of ``keys`` + ``vectors`` under
``embeddings/texts-<encoder>``), so a corpus that shares texts with one encoded before (another
chunking of the same documents, a corpus with a few passages changed, a node's windows) only
encodes the texts that are new. Shards are written as they finish, so an interrupted pass (a
kill at 90% of a long corpus) resumes from what it kept. A whole corpus seen before loads from
one file (``embeddings/<encoder + corpus>.npy``) without reading the shards.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..paths import cache_dir

KEY_BYTES = 16


def texts_hash(texts: Sequence[str]) -> str:
    """Order-sensitive SHA-256 over the exact texts that are encoded."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def text_key(text: str) -> bytes:
    """A text's key in the store (the first bytes of its SHA-256)."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:KEY_BYTES]


def _save_atomic(path: Path, array: np.ndarray, **more: np.ndarray) -> None:
    suffix = ".npz" if more else ".npy"
    fd, tmp = tempfile.mkstemp(prefix=".emb-", suffix=suffix, dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        if more:
            np.savez(handle, vectors=array, **more)
        else:
            np.save(handle, array, allow_pickle=False)
    Path(tmp).replace(path)


class TextStore:
    """Vectors of one encoder by text key, in shards written atomically (``shard-*.npz``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[bytes, np.ndarray]:
        """Every stored vector by key (an unreadable shard, e.g. cut by a full disk, is
        skipped: its texts are encoded again)."""
        found: dict[bytes, np.ndarray] = {}
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys, vectors = data["keys"], data["vectors"]
            except (OSError, ValueError, KeyError):
                continue
            found.update(zip((bytes(k) for k in keys), vectors))
        return found

    def add(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store one shard of vectors."""
        name = hashlib.sha256(b"".join(keys)).hexdigest()[:16]
        packed = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
        _save_atomic(self.folder / f"shard-{name}.npz", vectors, keys=packed)


def cached_embeddings(
    texts: Sequence[str],
    model_identity: str,
    encode: Callable[[list[str]], np.ndarray],
    use_cache: bool = True,
    chunk_size: int = 1024,
    show_progress: bool = False,
) -> tuple[np.ndarray, bool]:
    """Return ``(embeddings, was_cached)`` for ``texts``, encoding only texts never stored.

    Args:
        texts: Texts in corpus order.
        model_identity: A stable identity of the encoder (e.g. its weights' hash).
        encode: Computes float32 embeddings for a list of texts.
        use_cache: ``False`` always encodes every text and writes nothing.
        chunk_size: Texts per shard (the unit a resumed run keeps).
        show_progress: A progress bar over the texts still to encode.

    ``was_cached`` is true when the whole corpus came from its one file.
    """
    texts = list(texts)
    folder = cache_dir() / "embeddings"
    model_key = hashlib.sha256(model_identity.encode()).hexdigest()[:32]
    key = hashlib.sha256(f"{model_identity}|{texts_hash(texts)}".encode()).hexdigest()[:32]
    path = folder / f"{key}.npy"
    if use_cache and path.is_file():
        array = np.load(path, allow_pickle=False)
        if array.shape[0] == len(texts):
            return array, True
    store = TextStore(folder / f"texts-{model_key}") if use_cache else None
    keys = [text_key(t) for t in texts]
    known = store.load() if store is not None else {}
    todo = list({k: i for i, k in enumerate(keys) if k not in known}.values())
    with tqdm(total=len(todo), desc="embed", unit="text", disable=not show_progress) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            vectors = np.ascontiguousarray(encode([texts[i] for i in chunk]), dtype=np.float32)
            if store is not None:
                store.add([keys[i] for i in chunk], vectors)
            known.update(zip((keys[i] for i in chunk), vectors))
            bar.update(len(chunk))
    array = np.stack([known[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
    if use_cache:
        _save_atomic(path, array)
    return array, False
