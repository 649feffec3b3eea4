"""Long-document corpora: the shared corpus's articles cut by the frameworks' own splitters.

Users index their documents as nodes cut by their framework (LlamaIndex's ``SentenceSplitter``
behind ``Settings.chunk_size``, 1024 tokens by default; LangChain's
``RecursiveCharacterTextSplitter``, 4000 characters by default), not as 100-word passages.
:func:`chunked_corpus` rebuilds the articles of the shared corpus (consecutive passages with the
same title, in corpus order, paragraphs joined by a blank line) and cuts each one with a
splitter, so retrieval can be measured on the nodes users actually have. A node's id is its
article's first passage id plus ``#`` and its number in the article; its title is the
article's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from .._optional import require
from ..data import Passage, load_passages, save_passages
from ..paths import cache_dir, data_dir

PASSAGES = "passages"
#: chunking name -> (framework, size, unit); overlaps are the splitters' defaults (200).
CHUNKINGS: dict[str, tuple[str, int, str]] = {
    "llama-256": ("llama-index", 256, "tokens"),
    "llama-512": ("llama-index", 512, "tokens"),
    "llama-1024": ("llama-index", 1024, "tokens"),
    "lc-1000": ("langchain", 1000, "characters"),
    "lc-4000": ("langchain", 4000, "characters"),
}
CHUNKING_NAMES = (PASSAGES, *CHUNKINGS)
PARAGRAPH = "\n\n"


def articles(passages: Sequence[Passage]) -> list[list[Passage]]:
    """Runs of consecutive passages with the same title (one article each), in corpus order."""
    runs: list[list[Passage]] = []
    for passage in passages:
        if runs and passage.title and runs[-1][0].title == passage.title:
            runs[-1].append(passage)
        else:
            runs.append([passage])
    return runs


def splitter(chunking: str) -> Callable[[str], list[str]]:
    """The framework splitter of ``chunking`` (default overlap), as ``text -> chunks``.

    Raises:
        ValueError: An unknown chunking name.
        ImportError: The framework is not installed (the message names the extra).
    """
    if chunking not in CHUNKINGS:
        raise ValueError(f"unknown chunking {chunking!r}; choose one of "
                         f"{', '.join(CHUNKING_NAMES)}")
    framework, size, _ = CHUNKINGS[chunking]
    if framework == "llama-index":
        parsers = require("llama_index.core.node_parser", "llama-index")
        return parsers.SentenceSplitter(chunk_size=size).split_text
    splitters = require("langchain_text_splitters", "langchain")
    return splitters.RecursiveCharacterTextSplitter(chunk_size=size).split_text


def chunk_articles(passages: Sequence[Passage], chunking: str,
                   show_progress: bool = True) -> list[Passage]:
    """Every article of ``passages`` cut by the splitter of ``chunking`` into nodes."""
    split = splitter(chunking)
    nodes = []
    for members in tqdm(articles(passages), desc=f"chunk {chunking}", unit="article",
                        disable=not show_progress):
        text = PARAGRAPH.join(p.text for p in members)
        pieces = [piece for piece in split(text) if piece.strip()] or [text]
        nodes += [Passage(f"{members[0].id}#{i}", piece, members[0].title)
                  for i, piece in enumerate(pieces)]
    return nodes


def chunked_corpus(chunking: str, data: str | os.PathLike[str] | None = None,
                   show_progress: bool = True) -> list[Passage]:
    """The shared ODQA corpus as ``chunking`` cuts it (``passages``: the corpus as it is).

    The nodes are cached under ``$INVAR_RAG_CACHE/corpora``, keyed by the corpus file's content
    and the chunking, so a benchmark cuts each corpus once.
    """
    source = data_dir(data) / "odqa" / "corpus.jsonl"
    if chunking == PASSAGES:
        return load_passages(source)
    if chunking not in CHUNKINGS:
        raise ValueError(f"unknown chunking {chunking!r}; choose one of "
                         f"{', '.join(CHUNKING_NAMES)}")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    key = json.dumps([chunking, *CHUNKINGS[chunking], digest])
    folder = cache_dir() / "corpora"
    path = folder / f"{chunking}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"
    if path.is_file():
        return load_passages(path)
    nodes = chunk_articles(load_passages(source), chunking, show_progress)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    save_passages(partial, nodes)
    partial.replace(path)  # a killed run never leaves a half file under the final name
    return nodes
