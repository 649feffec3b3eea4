from __future__ import annotations

import pytest

from invar_rag_integrations.data import Passage, load_passages, read_jsonl


def test_read_jsonl_reports_file_and_line_of_malformed_json(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "1", "text": "x"}\n\n{"id": 2,\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"c\.jsonl:3: malformed JSON"):
        list(read_jsonl(path))


def test_read_jsonl_rejects_non_objects_and_non_utf8(tmp_path):
    arr = tmp_path / "a.jsonl"
    arr.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"a\.jsonl:1: expected a JSON object"):
        list(read_jsonl(arr))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"id": "1", "text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.jsonl:1: not UTF-8"):
        list(read_jsonl(latin))


def test_load_passages(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": 1, "title": "T", "text": "body"}\n{"id": "b", "text": "x"}\n')
    assert load_passages(path) == [Passage("1", "body", "T"), Passage("b", "x", "")]
    assert load_passages(path)[0].full_text() == "T\nbody"


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "corpus is empty"), ('{"id": "1"}\n', ":1: a passage needs 'id' and 'text'"),
     ('{"id": "1", "text": "a"}\n{"id": "1", "text": "b"}\n', "duplicate passage ids: '1'")],
)
def test_load_passages_errors(tmp_path, content, message):
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_passages(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_passages(tmp_path / "nope.jsonl")
