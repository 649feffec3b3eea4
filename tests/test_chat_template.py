"""Prompts in the base model's chat form: rendered once from the tokenizer, kept as text with
``{message}`` and ``{answer}``, used by the scorer and the generator's template (the family
matrix, ``test_families.py``, trains and answers with them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_families import CHATML, tiny_family_model

from invar_rag_integrations.generation import PromptTemplate
from invar_rag_integrations.invar.settings import InvarSettings, ScorerSettings
from invar_rag_integrations.models.chat_template import (
    ChatForm,
    render_chat_template,
    resolve_chat_template,
)

QWEN_FORM = "<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_family_model(tmp_path_factory.mktemp("q"), "qwen2"))


def test_the_form_is_rendered_from_the_tokenizers_template(qwen_tokenizer, tmp_path: Path,
                                                           tiny_lm_dir: Path) -> None:
    from transformers import AutoTokenizer

    assert qwen_tokenizer.chat_template == CHATML
    assert render_chat_template(qwen_tokenizer) == QWEN_FORM
    assert resolve_chat_template("model", qwen_tokenizer) == QWEN_FORM
    assert resolve_chat_template(None, qwen_tokenizer) is None
    assert resolve_chat_template(QWEN_FORM, None) == QWEN_FORM
    # a tokenizer that adds BOS itself: the form leaves out the template's own
    llama = AutoTokenizer.from_pretrained(tiny_family_model(tmp_path, "llama"))
    form = render_chat_template(llama)
    assert not form.startswith(llama.bos_token) and form.startswith("<|start_header_id|>user")
    with pytest.raises(ValueError, match="no chat template.*chat_template"):
        render_chat_template(AutoTokenizer.from_pretrained(tiny_lm_dir))


@pytest.mark.parametrize("bad", ["{message} only", "{answer} then {message}",
                                 "{message}{message}{answer}"])
def test_a_form_without_its_markers_in_order_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"\{message\} and then \{answer\}"):
        ChatForm.parse(bad)
    with pytest.raises(ValueError, match="chat template"):
        ScorerSettings(chat_template=bad)
    with pytest.raises(ValueError, match="chat template"):
        PromptTemplate(chat_template=bad)


def test_the_generators_template_in_chat_form() -> None:
    plain, chat = PromptTemplate(n_shots=1), PromptTemplate(n_shots=1, chat_template=QWEN_FORM)
    text = chat.render("who discovered penicillin")
    assert text == f"<|im_start|>user\n{plain.render('who discovered penicillin')}<|im_end|>\n" \
                   "<|im_start|>assistant\n"
    assert (chat.continuation(" Paris "), chat.target("Paris")) == ("Paris", "Paris<|im_end|>\n")
    assert (plain.continuation("Paris"), plain.target("Paris")) == (" Paris", " Paris\n")
    assert (chat.stop, plain.stop, plain.turn_end) == (("\n", "<|im_end|>"), ("\n",), ())
    filled = chat.with_fields().format(context_str="[1] x", query_str="q")
    assert filled.startswith("<|im_start|>user\n") and filled.endswith("assistant\n")
    assert PromptTemplate.from_dict(chat.to_dict()) == chat
    stored = plain.to_dict()
    del stored["chat_template"]  # a manifest written before chat forms: the plain prompt
    assert PromptTemplate.from_dict(stored) == plain
    with pytest.raises(ValueError, match="resolve_chat_template"):
        PromptTemplate(chat_template="model")


def test_a_chat_training_example_learns_the_turns_end(qwen_tokenizer) -> None:
    from invar_rag_integrations.training.generator_data import IGNORE_INDEX, tokenize_example

    template = PromptTemplate(n_shots=0, chat_template=QWEN_FORM)
    example = tokenize_example(qwen_tokenizer, template.render("capital of france"),
                               template.target("Paris"))
    answer = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert qwen_tokenizer.decode(answer) == "Paris<|im_end|>\n"


def test_the_scorer_settings_keep_the_plain_prompt_by_default() -> None:
    assert InvarSettings().chat_template is None
    assert ScorerSettings(chat_template="model").chat_template == "model"


def test_a_zero_shot_scorer_reads_the_models_chat_form(qwen_tokenizer, tiny_encoder_dir: Path,
                                                        tmp_path: Path) -> None:
    from invar_rag_integrations.demo import demo_passages
    from invar_rag_integrations.invar import TwoStageRetriever

    model = tiny_family_model(tmp_path, "qwen2")
    retriever = TwoStageRetriever.zero_shot(str(model), str(tiny_encoder_dir),
                                         InvarSettings(candidates=2, chat_template="model"),
                                         precision="float32", show_progress=False)
    assert retriever.reranker.settings.chat_template == QWEN_FORM
    tokens = retriever.scorer.tokens
    row = tokens.row(tokens.question("who discovered penicillin"), [])
    assert qwen_tokenizer.decode(row).endswith("<|im_start|>assistant\nwho discovered penicillin")
    retriever.index(demo_passages())
    assert len(retriever.search(["who discovered penicillin"], 2)[0].ids) == 2


def test_init_system_keeps_the_rendered_form(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    from invar_rag_integrations.cli import main
    from invar_rag_integrations.invar import TwoStageRetriever
    from invar_rag_integrations.system import read_manifest

    model, system = tiny_family_model(tmp_path, "qwen2"), tmp_path / "system"
    main(["init-system", str(system), "--base-model", str(model), "--coarse-encoder",
          str(tiny_encoder_dir), "--chat-template", "model"])
    entry = read_manifest(system)["retriever"]
    assert entry["settings"]["chat_template"] == QWEN_FORM
    assert "--chat-template model" in read_manifest(system)["training"]["retriever"]["command"]
    retriever = TwoStageRetriever.from_pretrained(system, precision="float32",
                                                  show_progress=False)
    assert retriever.scorer.tokens.question_space == ""
    with pytest.raises(SystemExit, match=r"\{message\} and then \{answer\}"):
        main(["init-system", str(tmp_path / "other"), "--base-model", str(model),
              "--coarse-encoder", str(tiny_encoder_dir), "--chat-template", "{answer}"])
