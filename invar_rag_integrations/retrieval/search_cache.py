"""Search results cached on disk, so training and evaluation retrieve each question once."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from .base import Retriever, SearchResult, check_k


def cached_search(retriever: Retriever, queries: Sequence[str], k: int,
                  cache_dir: str | os.PathLike[str], batch_size: int = 64,
                  show_progress: bool = True) -> list[SearchResult]:
    """``retriever.search(queries, k)``, reading and appending JSON lines under ``cache_dir``.

    The file is keyed by the retriever's identity, its indexed passage ids and ``k``; results
    are appended batch by batch, so an interrupted run keeps what it finished (a line cut by a
    kill is ignored and recomputed).
    """
    k = check_k(k)
    key = hashlib.sha256("|".join([retriever.identity(), *retriever.passage_ids]).encode())
    file = Path(cache_dir) / f"search-{retriever.kind}-{key.hexdigest()[:16]}-k{k}.jsonl"
    file.parent.mkdir(parents=True, exist_ok=True)
    known: dict[str, SearchResult] = {}
    text = file.read_text(encoding="utf-8") if file.is_file() else ""
    if text and not text.endswith("\n"):  # a line cut by a kill: end it before appending
        with file.open("a", encoding="utf-8") as handle:
            handle.write("\n")
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        known[record["query"]] = SearchResult(record["ids"], record["scores"])
    missing = sorted({q for q in queries if q not in known})
    with file.open("a", encoding="utf-8") as handle, tqdm(
            total=len(missing), desc=f"search ({retriever.name})", unit="query",
            disable=not show_progress or not missing) as bar:
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            for query, result in zip(batch, retriever.search(batch, k)):
                known[query] = result
                handle.write(json.dumps({"query": query, "ids": result.ids,
                                         "scores": result.scores}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    return [known[q] for q in queries]
