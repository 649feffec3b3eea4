"""LoRA targets resolved from the loaded model: the architecture's attention projections by
default, a user's list checked against the model's linear layers."""

from __future__ import annotations

import pytest
import torch

from invar_rag_integrations.models.adapters import lora_config
from invar_rag_integrations.models.lora_targets import linear_layers, resolve_lora_targets


def _tiny(config_class, **extra):
    from transformers import AutoModelForCausalLM

    config = config_class(vocab_size=64, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def test_auto_is_the_attention_projections_of_each_family() -> None:
    from transformers import LlamaConfig, Phi3Config, Qwen2Config

    llama = _tiny(LlamaConfig)
    assert resolve_lora_targets(llama, ["auto"]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert linear_layers(llama) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                    "up_proj", "v_proj"]
    assert resolve_lora_targets(_tiny(Qwen2Config), ["auto"])[0] == "q_proj"
    phi3 = _tiny(Phi3Config, pad_token_id=0)
    assert resolve_lora_targets(phi3, ["auto"]) == ["qkv_proj", "o_proj"]
    assert resolve_lora_targets(phi3, ["gate_up_proj", "down_proj"]) == ["gate_up_proj",
                                                                         "down_proj"]


def test_targets_the_model_lacks_fail_naming_its_layers() -> None:
    from transformers import Phi3Config

    phi3 = _tiny(Phi3Config, pad_token_id=0)
    with pytest.raises(ValueError, match=r"LoRA targets \['q_proj', 'v_proj'\] are not layers "
                                         r"of this model: this phi3 model's linear layers are "
                                         r"\['down_proj', 'gate_up_proj', 'o_proj', 'qkv_proj'\]"
                                         r"; set lora_targets"):
        lora_config(phi3, 8, 16, 0.0, ["q_proj", "v_proj"])
    with pytest.raises(ValueError, match=r"\['lm_head'\] cannot be LoRA targets"):
        resolve_lora_targets(phi3, ["lm_head", "o_proj"])


def test_a_wrapped_model_keeps_its_layer_names_and_unknown_families_need_a_list() -> None:
    from peft import get_peft_model
    from transformers import GPT2Config, LlamaConfig

    llama = _tiny(LlamaConfig)
    wrapped = get_peft_model(llama, lora_config(llama, 4, 8, 0.0, ["auto"]))
    assert resolve_lora_targets(wrapped, ["gate_proj"]) == ["gate_proj"]
    assert "q_proj" in linear_layers(wrapped) and "base_layer" not in linear_layers(wrapped)
    from transformers import AutoModelForCausalLM

    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=4,
                                                       vocab_size=64))
    with pytest.raises(ValueError, match="no default LoRA targets are known for model type "
                                         "'gpt2'"):
        resolve_lora_targets(gpt2, ["auto"])
