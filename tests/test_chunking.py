"""Long-document corpora cut by the frameworks' splitters (``evaluation.chunking``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from invar_rag_integrations.cli import main
from invar_rag_integrations.data import Passage, save_passages
from invar_rag_integrations.evaluation.chunking import articles, chunk_articles, chunked_corpus

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank. "
PASSAGES = [Passage(f"a-{i}", SENTENCE * 12, "Fox") for i in range(6)] + \
    [Passage("b-0", "A single short passage.", "Other"), Passage("c-0", "No title here.")]


def test_articles_are_runs_of_one_title_in_corpus_order() -> None:
    runs = articles([*PASSAGES, Passage("a-9", "Fox again, later.", "Fox")])
    assert [[p.id for p in run] for run in runs] == [
        [f"a-{i}" for i in range(6)], ["b-0"], ["c-0"], ["a-9"]]


@pytest.mark.parametrize("chunking", ["llama-256", "lc-1000"])
def test_articles_are_cut_by_the_framework_splitter(chunking: str) -> None:
    nodes = chunk_articles(PASSAGES, chunking, show_progress=False)
    fox = [n for n in nodes if n.id.startswith("a-0#")]
    assert len(fox) > 1 and [n.id for n in fox] == [f"a-0#{i}" for i in range(len(fox))]
    assert all(n.title == "Fox" for n in fox)
    assert [n.text for n in nodes if n.id in ("b-0#0", "c-0#0")] == [
        "A single short passage.", "No title here."]
    words = sum(len(n.text.split()) for n in fox)
    assert words >= 6 * len(SENTENCE.split()) * 12  # overlap repeats words, nothing is lost


def test_unknown_chunkings_name_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown chunking 'llama-2048'.*llama-1024"):
        chunk_articles(PASSAGES, "llama-2048")


def test_chunked_corpus_is_cut_once_and_eval_retrieval_reads_it(odqa_dir: Path, tmp_path: Path,
                                                                capsys) -> None:
    corpus = odqa_dir / "odqa" / "corpus.jsonl"
    save_passages(corpus, PASSAGES)
    nodes = chunked_corpus("llama-512", odqa_dir, show_progress=False)
    cached = list((tmp_path / "cache" / "corpora").glob("llama-512-*.jsonl"))
    assert len(cached) == 1 and chunked_corpus("llama-512", odqa_dir) == nodes
    assert chunked_corpus("passages", odqa_dir) == PASSAGES
    output = tmp_path / "rows.json"
    main(["eval-retrieval", "--retriever", "bm25", "--data-dir", str(odqa_dir),
          "--chunking", "llama-512", "--k", "1", "--output", str(output)])
    rows = json.loads(output.read_text())["rows"]
    assert rows and all(r["chunking"] == "llama-512" for r in rows)
    assert "acc@1" in capsys.readouterr().out
