"""The family matrix: the scorer, its LoRA training, the generator and ``InvarRAG.answer`` on a
tiny random model of each common causal-LM family, each with a tiny tokenizer that copies the
family's pre-tokenisation (byte-level BPE or SentencePiece's "▁"), BOS behaviour and chat
template, through the same commands a user runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import _retriever_config, _train_texts, generator_config, write_odqa

from invar_rag_integrations.cli import main as cli
from invar_rag_integrations.demo import demo_passages

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
          "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
          "{% endif %}")
INST = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
        "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == "
         "'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

# family -> (config class name, tokenizer style, BOS added, specials (bos, eos, pad), template,
#            extra config)
FAMILIES = {
    "llama": ("LlamaConfig", "byte", True, ("<|begin_of_text|>", "<|eot_id|>", "<|pad|>"),
              LLAMA3, {}),
    "qwen2": ("Qwen2Config", "byte", False, (None, "<|im_end|>", "<|endoftext|>"), CHATML, {}),
    "qwen3": ("Qwen3Config", "byte", False, (None, "<|im_end|>", "<|endoftext|>"), CHATML,
              {"head_dim": 8}),
    "mistral": ("MistralConfig", "sentencepiece", True, ("<s>", "</s>", "<pad>"), INST, {}),
    "gemma3": ("Gemma3TextConfig", "sentencepiece", True, ("<bos>", "<eos>", "<pad>"), GEMMA,
               {"head_dim": 8, "query_pre_attn_scalar": 8}),
    "phi3": ("Phi3Config", "sentencepiece", False, ("<s>", "<|endoftext|>", "<pad>"), PHI3, {}),
}


def tiny_family_model(folder: Path, family: str, **sizes: int) -> Path:
    """A tiny random model of ``family`` and its tokenizer, saved as an HF folder (``sizes``
    override the config's)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    config_name, style, adds_bos, (bos, eos, pad), template, extra = FAMILIES[family]
    specials = [t for t in (pad, bos, eos) if t]
    bpe = Tokenizer(models.BPE())
    if style == "byte":
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # Gemma's SentencePiece puts no "▁" before the first word; Llama-2's (Mistral, Phi-3) do
        scheme = "never" if family.startswith("gemma") else "first"
        bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
        bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials,
                                  initial_alphabet=alphabet)
    bpe.train_from_iterator(_train_texts(), trainer)
    if adds_bos:
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bpe.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos,
                                        pad_token=pad, chat_template=template)
    config = getattr(transformers, config_name)(**{
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 1024, "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        **extra, **sizes})
    torch.manual_seed(0)
    path = folder / family
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_scores_trains_and_answers(family: str, tmp_path: Path,
                                                tiny_encoder_dir: Path) -> None:
    from invar_rag_integrations.data import passage_text
    from invar_rag_integrations.invar import TwoStageRetriever
    from invar_rag_integrations.invar.settings import SCORE_PROMPT, ScorerSettings
    from invar_rag_integrations.invar.tokens import ScorerTokens
    from invar_rag_integrations.models import load_base_lm
    from invar_rag_integrations.models.chat_template import ChatForm, render_chat_template
    from invar_rag_integrations.rag import InvarRAG

    model = tiny_family_model(tmp_path, family)
    data = write_odqa(tmp_path)
    cli(["train-retriever", str(_retriever_config(tmp_path, model, tiny_encoder_dir, data,
                                                  num_train_epochs=1, max_steps=1,
                                                  eval_every=1, save_steps=1,
                                                  chat_template="model"))])
    system = tmp_path / "system"
    manifest = json.loads((system / "invar_rag.json").read_text())
    adapter = json.loads((system / "retriever" / "adapter_config.json").read_text())
    _, tokenizer = load_base_lm(str(model))
    expected = {"phi3": {"qkv_proj", "o_proj"}}.get(family, {"q_proj", "k_proj", "v_proj",
                                                            "o_proj"})
    assert set(adapter["target_modules"]) == expected and "retriever" in manifest
    # the family's chat form, rendered once and kept in the manifest
    chat = render_chat_template(tokenizer)
    assert manifest["retriever"]["settings"]["chat_template"] == chat

    # the scorer on a short and a long node (read in windows), the same scores once reloaded
    passages = demo_passages()
    long_node = " ".join(p.text for p in passages[:8])
    retriever = TwoStageRetriever.from_pretrained(system, index=None, show_progress=False)
    scorer = retriever.scorer
    scores = scorer.score("who discovered penicillin", [passages[13], long_node])
    assert np.isfinite(scores).all()
    again = TwoStageRetriever.from_pretrained(system, index=None, show_progress=False)
    np.testing.assert_allclose(again.scorer.score("who discovered penicillin",
                                                  [passages[13], long_node]), scores, atol=1e-5)

    # the scorer's tokens are the joined text's, in the plain prompt and in the family's chat
    # form: BOS where the family adds one, no stray "▁" or "Ġ" at a join
    for chat in (None, render_chat_template(tokenizer)):
        tokens = ScorerTokens(tokenizer, ScorerSettings(chat_template=chat,
                                                        max_passage_tokens=512))
        node = tokens.node(passages[13])
        row = tokens.row(tokens.question("who discovered penicillin"), node.prefix + node.body)
        prompt = ChatForm.parse(chat).prompt(SCORE_PROMPT) if chat else SCORE_PROMPT
        joined = prompt.replace("{passage}", passage_text(passages[13])) + \
            (" " if chat is None else "") + "who discovered penicillin"
        assert row == tokenizer(joined)["input_ids"]
        assert (row[0] == tokenizer.bos_token_id) == FAMILIES[family][2]

    # one generator step on the trained retriever, then answers
    cli(["train-generator", str(generator_config(tmp_path, system, data, max_steps=1,
                                                 chat_template="model"))])
    rag = InvarRAG.from_pretrained(system, corpus=passages)
    assert rag.template.chat_template == chat
    answer = rag.answer("who discovered penicillin")
    assert isinstance(answer.text, str) and len(answer.sources) == rag.settings.k
    prompt = rag.prompt("who discovered penicillin", answer.sources).text
    form = ChatForm.parse(chat)
    assert prompt.startswith(form.before) and prompt.endswith(form.between)
