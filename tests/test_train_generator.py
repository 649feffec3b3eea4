"""Generation stage: prompt budget, label masking, the training driver, InvarRAG loading and its
bad-input errors (tiny models built from configs)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import generator_config

from invar_rag_integrations.data import Passage
from invar_rag_integrations.generation import PromptTemplate
from invar_rag_integrations.training.generator_data import (
    IGNORE_INDEX,
    answer_target,
    make_collate,
    tokenize_example,
)
from invar_rag_integrations.training.retriever_data import select_questions
from invar_rag_integrations.training.train_generator import parse_arguments

LONG = Passage("long", " ".join(f"word{i}" for i in range(300)), "Long")
SHORT = Passage("short", "Paris is the capital of France.", "Paris")


def _words(text: str) -> int:
    return len(text.split())


def test_prompt_fits_by_cutting_passages_first_then_the_question() -> None:
    template = PromptTemplate(n_shots=1, max_passage_words=None)
    question = "which city is the capital of france today"
    full = template.render(question, [LONG, SHORT])
    assert template.fit(question, [LONG, SHORT], _words, _words(full)).truncated is False

    fitted = template.fit(question, [LONG, SHORT], _words, 100)
    assert _words(fitted.text) <= 100 and fitted.question_words is None
    assert 0 < fitted.passage_words < 300 and "passages cut to" in fitted.describe()
    assert question in fitted.text and "[2] (Paris)" in fitted.text

    closed = _words(template.render(question))
    fitted = template.fit(question, [LONG, SHORT], _words, closed - 3)
    assert fitted.passage_words == 0 and fitted.question_words == len(question.split()) - 3
    assert "Passages:" not in fitted.text and "capital of france today" in fitted.text
    assert fitted.describe() == "passages dropped; question cut to its last 5 words"

    with pytest.raises(ValueError, match="instruction and examples alone exceed 5 tokens"):
        template.fit(question, [SHORT], _words, 5)


def test_template_round_trips_through_the_manifest_form() -> None:
    template = PromptTemplate(n_shots=2, max_passage_words=50)
    assert PromptTemplate.from_dict(json.loads(json.dumps(template.to_dict()))) == template


def test_answer_target_prefers_the_answer_the_passages_contain() -> None:
    assert answer_target(["City of Light", "Paris"], [SHORT]) == "Paris"
    assert answer_target(["Lutetia", "City of Light"], [SHORT]) == "Lutetia"


def test_labels_cover_only_the_answer_tokens(tiny_lm_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    template = PromptTemplate(n_shots=0)
    prompt = template.render("who discovered penicillin", [SHORT])
    example = tokenize_example(tokenizer, prompt, template.target("fleming"))
    prompt_len = len(tokenizer(prompt)["input_ids"])
    assert example["input_ids"][:prompt_len] == tokenizer(prompt)["input_ids"]
    assert all(label == IGNORE_INDEX for label in example["labels"][:prompt_len])
    answer = example["labels"][prompt_len:]
    assert IGNORE_INDEX not in answer and tokenizer.decode(answer) == " fleming\n"

    short = tokenize_example(tokenizer, "Question: x\nAnswer:", template.target("paris"))
    batch = make_collate(tokenizer.pad_token_id)([example, short])
    width = len(example["input_ids"])
    assert batch["input_ids"].shape == (2, width)
    pad = len(short["input_ids"])
    assert batch["attention_mask"][1, pad:].sum() == 0
    assert (batch["labels"][1, pad:] == IGNORE_INDEX).all()
    assert (batch["labels"] != IGNORE_INDEX).sum() == len(answer) + sum(
        label != IGNORE_INDEX for label in short["labels"])


def test_generator_config_needs_a_system_dir(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"output_dir": "x"}))
    with pytest.raises(ValueError, match="system_dir is required"):
        parse_arguments([str(path)])
    path.write_text(json.dumps({"output_dir": "x", "system_dir": "s", "lora_r": 128}))
    with pytest.raises(ValueError, match="lora_r must be in 1..64"):
        parse_arguments([str(path)])
    path.write_text(json.dumps({"output_dir": "x", "system_dir": "s",
                                "lora_targets": []}))
    with pytest.raises(ValueError, match="lora_targets must be a non-empty list"):
        parse_arguments([str(path)])


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "training" / "configs")
                                          .glob("generator_*.json")), ids=lambda p: p.name)
def test_shipped_generator_configs_parse(config: Path) -> None:
    system, generator, data, train = parse_arguments([str(config)])
    assert len(data.train_datasets) == len(data.questions_per_dataset)
    assert generator.lora_r <= 64 and system.system_dir


# --- the driver and the trained system, end to end on tiny models ----------------------------

@pytest.fixture()
def tiny_system(tmp_path: Path, retriever_config: Callable[..., Path]) -> Path:
    """A tiny trained retriever system (indexed over the test corpus)."""
    from invar_rag_integrations.cli import main as cli

    cli(["train-retriever", str(retriever_config(tmp_path))])
    return tmp_path / "system"


@pytest.mark.slow
def test_driver_trains_resumes_and_invar_rag_answers_with_sources(
        tmp_path: Path, tiny_system: Path, odqa_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from invar_rag_integrations.cli import main as cli
    from invar_rag_integrations.rag import InvarRAG

    config = generator_config(tmp_path, tiny_system, odqa_dir, max_steps=2)
    cli(["train-generator", str(config)])
    capsys.readouterr()
    cli(["train-generator", str(config), "--max_steps", "3"])
    assert f"resuming from {tmp_path / 'generator-run' / 'checkpoint-2'}" in capsys.readouterr().err
    manifest = json.loads((tiny_system / "invar_rag.json").read_text())
    generator = manifest["generator"]
    assert generator["settings"]["k"] == 2 and generator["prompt"]["n_shots"] == 1
    questions, _ = select_questions(["nq", "popqa_longtail", "triviaqa_dev", "squad",
                                     "freebaseqa"], [2, 2, 2, 1, 1], 0, 42, str(odqa_dir))
    assert manifest["metrics"]["generator"]["train_examples"] == len(questions)
    assert "retriever" in manifest  # the retriever entry is kept
    state = json.loads((tmp_path / "generator-run" / "checkpoint-3" / "trainer_state.json")
                       .read_text())
    assert state["global_step"] == 3

    rag = InvarRAG.from_pretrained(tiny_system)
    lm = rag.generator.model
    assert lm is rag.retriever.scorer.lm  # one copy of the base model, two adapters
    assert set(lm.peft_config) == {"retriever", "generator"}
    assert not any(p.requires_grad for p in lm.parameters())

    sources = rag.retrieve("who discovered penicillin", k=3)
    assert len(sources) == 3 and sources[0].score >= sources[-1].score
    assert all(isinstance(s.passage, Passage) for s in sources)
    answer = rag.answer("who discovered penicillin")
    assert len(answer.sources) == 2 and answer.truncation == "" and "\n" not in answer.text
    batch = rag.answer_batch(["who discovered penicillin", "what is the capital of france"])
    assert batch[0].text == answer.text and len(batch) == 2
    assert "".join(rag.stream("who discovered penicillin")) == answer.text

    # the retriever's vectors are unchanged by the generator adapter sitting beside it
    before = rag.retrieve_batch(["what is the capital of france"], k=3)
    rag.answer("what is the capital of france")
    assert rag.retrieve_batch(["what is the capital of france"], k=3) == before

    other = tmp_path / "other-system"
    shutil.copytree(tiny_system, other)
    with pytest.raises(SystemExit, match="holds a generator run for .*system.*choose another"):
        cli(["train-generator", str(config), "--system_dir", str(other)])

    with pytest.raises(ValueError, match="empty or whitespace"):
        rag.answer("   ")
    long_question = "please tell me " * 150 + "who discovered penicillin"
    with pytest.warns(UserWarning, match="query text.* truncated"):  # by the retriever
        with pytest.warns(UserWarning, match="exceeded 400 tokens"):  # and in the prompt
            long = rag.answer(long_question)
    assert "passages dropped" in long.truncation and "question cut" in long.truncation


@pytest.mark.slow
def test_invar_rag_refuses_missing_and_foreign_generator_adapters(
        tmp_path: Path, tiny_system: Path, odqa_dir: Path) -> None:
    from invar_rag_integrations.cli import main as cli
    from invar_rag_integrations.rag import InvarRAG

    cli(["train-generator", str(generator_config(tmp_path, tiny_system, odqa_dir,
                                                  max_steps=1))])
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_system, foreign, ignore=shutil.ignore_patterns("index", "checkpoint-*"))
    manifest = json.loads((foreign / "invar_rag.json").read_text())
    manifest["generator"]["base_model"] = {"name": "other-lm", "identity": "other:sha256:abc"}
    (foreign / "invar_rag.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"trained on base model 'other-lm' \(other:sha256:abc\)"
                                         r", but the loaded base model is '.*tiny-llama"):
        InvarRAG.from_pretrained(tiny_system, generator_dir=foreign)

    weights = tiny_system / "generator" / "adapter_model.safetensors"
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=f"generator adapter file missing: {weights}"):
        InvarRAG.from_pretrained(tiny_system)


@pytest.mark.slow
def test_eval_qa_reports_every_system_in_one_run(tmp_path: Path, tiny_system: Path,
                                                 odqa_dir: Path) -> None:
    from invar_rag_integrations.cli import main as cli
    from invar_rag_integrations.evaluation.qa_eval import QA_SYSTEMS

    cli(["train-generator", str(generator_config(tmp_path, tiny_system, odqa_dir,
                                                  max_steps=1))])
    output = tmp_path / "qa.json"
    cli(["eval-qa", "--system", str(tiny_system), "--data-dir", str(odqa_dir), "--split", "dev",
         "--datasets", "nq", "popqa_longtail", "--sample", "3", "--output", str(output)])
    rows = json.loads(output.read_text())["rows"]
    assert {r["system"] for r in rows} == set(QA_SYSTEMS)
    for system in QA_SYSTEMS:
        mine = {(r["dataset"], r["metric"]): r for r in rows if r["system"] == system}
        assert set(mine) == {("nq", "em"), ("nq", "f1"), ("popqa_longtail", "em"),
                             ("popqa_longtail", "f1"), ("all", "tokens_per_s"),
                             ("all", "s_per_question")}
        assert mine[("nq", "em")]["n"] == 3 and 0 <= mine[("nq", "f1")]["value"] <= 1
