from __future__ import annotations

import pytest

from invar_rag_integrations.data import Passage
from invar_rag_integrations.generation import HFGenerator, PromptTemplate
from invar_rag_integrations.models import load_base_lm


@pytest.fixture(scope="module")
def generator(tiny_lm_dir) -> HFGenerator:
    return HFGenerator(*load_base_lm(str(tiny_lm_dir)))


def test_prompt_has_instruction_shots_passages_and_question():
    template = PromptTemplate(n_shots=2, max_passage_words=3)
    prompt = template.render(" Who? ", [Passage("p", "one two three four", "T")])
    assert prompt.startswith(template.instruction)
    assert prompt.count("Question:") == 3 and prompt.count("Answer:") == 3
    assert "[1] (T) one two three ..." in prompt
    assert prompt.endswith("Question: Who?\nAnswer:")
    assert "Passages:" not in PromptTemplate(n_shots=0).render("q")


def test_prompt_rejects_bad_settings_and_empty_question():
    with pytest.raises(ValueError, match="n_shots"):
        PromptTemplate(n_shots=99)
    with pytest.raises(ValueError, match="max_passage_words"):
        PromptTemplate(max_passage_words=0)
    with pytest.raises(ValueError, match="question is empty"):
        PromptTemplate().render("  ")


def test_clean_answer_keeps_first_line():
    assert PromptTemplate.clean_answer("  Paris\nQuestion: x") == "Paris"


def test_batched_generation_matches_one_by_one(generator):
    prompts = ["Question: who discovered penicillin?\nAnswer:", "planet", "a much longer prompt "
               "about the river nile and the deepest lake in the world"]
    batched = generator.generate(prompts, max_new_tokens=6, stop=(), batch_size=3)
    single = [generator.generate([p], max_new_tokens=6, stop=())[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(0 < g.num_tokens <= 6 for g in batched)


def test_stop_strings_cut_the_text(generator):
    [free] = generator.generate(["the planet"], max_new_tokens=12, stop=())
    assert free.text
    stop = free.text[len(free.text) // 2]
    [cut] = generator.generate(["the planet"], max_new_tokens=12, stop=(stop,))
    assert stop not in cut.text
    assert free.text.startswith(cut.text)


def test_sampling_is_seeded_and_bad_arguments_fail(generator):
    import torch

    torch.manual_seed(1)
    a = generator.generate(["the"], max_new_tokens=8, do_sample=True, stop=())
    torch.manual_seed(1)
    b = generator.generate(["the"], max_new_tokens=8, do_sample=True, stop=())
    assert a == b
    with pytest.raises(TypeError, match="sequence of strings"):
        generator.generate("the")
    with pytest.raises(ValueError, match="must be positive"):
        generator.generate(["the"], max_new_tokens=0)


def test_streaming_yields_the_greedy_text_piece_by_piece(generator):
    [free] = generator.generate(["the planet"], max_new_tokens=12, stop=())
    pieces = list(generator.stream("the planet", max_new_tokens=12, stop=()))
    assert len(pieces) > 1 and "".join(pieces) == free.text
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 2]
    [cut] = generator.generate(["the planet"], max_new_tokens=12, stop=(stop,))
    assert "".join(generator.stream("the planet", max_new_tokens=12, stop=(stop,))) == cut.text


def test_adapters_switch_per_call_on_one_base_model(tiny_lm_dir):
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_base_lm(str(tiny_lm_dir))
    plain = HFGenerator(base, tokenizer).generate(["the planet"], max_new_tokens=8, stop=())
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)
    torch.manual_seed(0)
    model = get_peft_model(base, config, adapter_name="retriever")
    model.add_adapter("generator", config)
    with torch.no_grad():  # make the two adapters differ strongly
        for name, p in model.named_parameters():
            if "lora_B.generator" in name:
                p.mul_(50)
    generator = HFGenerator(model, tokenizer)
    ids = {id(p) for p in model.get_base_model().parameters()}
    outputs = {name: generator.generate(["the planet"], max_new_tokens=8, stop=(),
                                        adapter=name)[0].text
               for name in (None, "retriever", "generator")}
    assert outputs[None] == plain[0].text  # adapters off = the base model
    assert outputs["generator"] != outputs[None]
    assert model.active_adapter == "retriever"  # the previous adapter is restored
    assert {id(p) for p in model.get_base_model().parameters()} == ids  # one copy
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        generator.generate(["x"], adapter="nope")
    with pytest.raises(ValueError, match="no adapters"):
        HFGenerator(*load_base_lm(str(tiny_lm_dir))).generate(["x"], adapter="generator")
