from __future__ import annotations

import json

import pytest

from invar_rag_integrations.cli import main


def test_eval_retrieval_prints_a_table_and_writes_long_form_json(odqa_dir, tmp_path, capsys):
    output = tmp_path / "out.json"
    main(["eval-retrieval", "--retriever", "bm25", "--data-dir", str(odqa_dir),
          "--datasets", "nq", "squad", "--k", "1", "5", "--output", str(output)])
    table = capsys.readouterr().out
    assert "| bm25 | nq |" in table and "| bm25 | squad |" in table
    payload = json.loads(output.read_text())
    assert set(payload) == {"command", "git_commit", "machine", "date", "rows"}
    metrics = {(r["dataset"], r["metric"]) for r in payload["rows"]}
    assert metrics == {(d, f"acc@{k}") for d in ("nq", "squad") for k in (1, 5)}
    row = payload["rows"][0]
    assert row["system"] == "bm25" and row["split"] == "dev" and 0 <= row["value"] <= 1
    assert row["n"] == 5


def test_eval_retrieval_on_a_saved_index(odqa_dir, tmp_path, capsys):
    from invar_rag_integrations.evaluation import odqa_corpus
    from invar_rag_integrations.retrieval import BM25Retriever

    saved = BM25Retriever()
    saved.index(odqa_corpus(odqa_dir))
    saved.save(tmp_path / "idx")
    main(["eval-retrieval", "--retriever", str(tmp_path / "idx"), "--data-dir", str(odqa_dir),
          "--output", str(tmp_path / "o.json")])
    assert "| bm25 | popqa_longtail |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--retriever", "bm25", "--datasets", "triviaqa_dev"], "use it for answer EM only"),
     (["--retriever", "nope"], "unknown retriever 'nope'"),
     (["--retriever", "bm25", "--data-dir", "/no/such/dir"], "--data-dir DIR")],
)
def test_eval_retrieval_errors_are_clear(odqa_dir, argv, message):
    if "--data-dir" not in argv:
        argv = [*argv, "--data-dir", str(odqa_dir)]
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-retrieval", *argv])
    assert message in str(exit_info.value)


def test_bad_numbers_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["eval-retrieval", "--retriever", "bm25", "--limit", "0"])
    assert "must be a positive integer" in capsys.readouterr().err
