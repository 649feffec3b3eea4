"""Invar encoder, system directory and Invar retriever on tiny models."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from invar_rag_integrations.data import Passage
from invar_rag_integrations.demo import demo_passages
from invar_rag_integrations.models import load_base_lm, load_coarse_encoder
from invar_rag_integrations.retrieval import InvarRetriever, Retriever, make_retriever
from invar_rag_integrations.retrieval.artifacts import (
    load_retriever_encoder,
    read_manifest,
    save_retriever,
)
from invar_rag_integrations.retrieval.invar import (
    InvarEncoder,
    InvarSettings,
    add_retriever_adapter,
)


def _encoder(lm_dir: Path, enc_dir: Path, **settings) -> InvarEncoder:
    torch.manual_seed(0)
    lm, tokenizer = load_base_lm(str(lm_dir))
    options = InvarSettings(projector_hidden=16, lora_r=4, **settings)
    return InvarEncoder(add_retriever_adapter(lm, options), tokenizer,
                        load_coarse_encoder(str(enc_dir)), options)


@pytest.fixture()
def encoder(tiny_lm_dir: Path, tiny_encoder_dir: Path) -> InvarEncoder:
    return _encoder(tiny_lm_dir, tiny_encoder_dir)


@pytest.fixture()
def system_dir(encoder: InvarEncoder, tmp_path: Path) -> Path:
    return save_retriever(encoder, tmp_path / "system", {"note": "test"}, {"score": 1.0})


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="doc_input"):
        InvarSettings(doc_input="summary")
    with pytest.raises(ValueError, match="lora_r"):
        InvarSettings(lora_r=128)
    with pytest.raises(ValueError, match="tau"):
        InvarSettings(tau=0)


@pytest.mark.parametrize("doc_input", ["coarse", "text", "coarse+text"])
def test_embed_is_normalised_and_depends_on_the_inputs_doc_input_names(
        tiny_lm_dir: Path, tiny_encoder_dir: Path, doc_input: str) -> None:
    encoder = _encoder(tiny_lm_dir, tiny_encoder_dir, doc_input=doc_input)
    texts = ["Paris is the capital of France", "The Nile is a river"]
    coarse = torch.from_numpy(encoder.coarse(texts))
    vectors = encoder.embed("passage", texts, coarse)
    assert vectors.shape == (2, encoder.hidden_size)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(vectors[0], vectors[1])
    if doc_input == "coarse":  # text is not read: only the coarse vector matters
        same = encoder.embed("passage", ["something else", "entirely"], coarse)
        assert torch.allclose(same, vectors, atol=1e-6)
    if doc_input == "text":  # the coarse vector is not read
        assert torch.allclose(encoder.embed("passage", texts, None), vectors, atol=1e-6)


def test_embed_pools_the_eos_position_whatever_the_padding(encoder: InvarEncoder) -> None:
    texts = ["who discovered penicillin", "what is the longest river in the world by length"]
    coarse = torch.from_numpy(encoder.coarse(texts))
    together = encoder.embed("query", texts, coarse)
    alone = torch.cat([encoder.embed("query", [t], c[None]) for t, c in zip(texts, coarse)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_embed_needs_its_inputs_and_truncates_with_one_warning(encoder: InvarEncoder) -> None:
    with pytest.raises(ValueError, match="coarse"):
        encoder.embed("query", ["q"], None)
    with pytest.raises(ValueError, match="kind"):
        encoder.embed("document", ["q"], None)
    long = " ".join(["river"] * 200)
    coarse = torch.from_numpy(encoder.coarse([long, long]))
    with pytest.warns(UserWarning, match="truncated"):
        encoder.embed("query", [long, long], coarse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.embed("query", [long], coarse[:1])  # warned once only
    assert encoder.truncated["query"] == 3


def test_gradients_reach_lora_and_projector_only(encoder: InvarEncoder) -> None:
    coarse = torch.from_numpy(encoder.coarse(["a question"]))
    encoder.embed("query", ["a question"], coarse).sum().backward()
    trained = {n for n, p in encoder.named_parameters() if p.grad is not None}
    assert any("lora_" in n for n in trained) and any("projector" in n for n in trained)
    assert all("lora_" in n or "projector" in n for n in trained)


def test_system_dir_round_trip(encoder: InvarEncoder, system_dir: Path) -> None:
    manifest = read_manifest(system_dir)
    assert (system_dir / "retriever" / "adapter_model.safetensors").is_file()
    assert (system_dir / "projector.safetensors").is_file()
    assert manifest["training"]["retriever"] == {"note": "test"}
    assert manifest["retriever"]["settings"]["num_soft_tokens"] == 4
    loaded, _ = load_retriever_encoder(system_dir)
    texts = ["who invented the airplane", "capital of france"]
    coarse = encoder.coarse(texts)
    for kind in ("query", "passage"):
        assert np.allclose(loaded.encode(kind, texts, coarse), encoder.encode(kind, texts, coarse),
                           atol=1e-5)


def test_loading_on_another_base_model_names_both(system_dir: Path, tmp_path: Path,
                                                  tiny_lm_dir: Path) -> None:
    import shutil

    other = tmp_path / "other-llama"
    shutil.copytree(tiny_lm_dir, other)
    with pytest.raises(ValueError, match="trained on base model .*tiny-llama.*other-llama"):
        load_retriever_encoder(system_dir, base_model=str(other))


def test_changed_weights_are_detected(system_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(system_dir / "projector.safetensors"))
    state["net.0.bias"] = state["net.0.bias"] + 1
    save_file(state, str(system_dir / "projector.safetensors"))
    with pytest.raises(ValueError, match="differ"):
        load_retriever_encoder(system_dir)


def test_invar_retriever_index_search_save_load(system_dir: Path, tmp_path: Path) -> None:
    retriever = InvarRetriever.from_pretrained(system_dir, chunk_size=16, show_progress=False)
    passages = demo_passages()
    retriever.index(passages)
    results = retriever.search(["who discovered penicillin", "capital of france"], 5)
    assert [len(r.ids) for r in results] == [5, 5]
    assert all(r.scores == sorted(r.scores, reverse=True) for r in results)
    retriever.save(system_dir / "index")
    again = make_retriever(str(system_dir))  # a system directory with its saved index
    assert again.passage_ids == [p.id for p in passages]
    assert again.search(["capital of france"], 5)[0].ids == results[1].ids
    loaded = Retriever.load(system_dir / "index")  # an index folder alone
    assert isinstance(loaded, InvarRetriever)
    assert loaded.search(["capital of france"], 5)[0].ids == results[1].ids
    with pytest.raises(ValueError, match="empty"):
        retriever.search([" "], 3)
    with pytest.raises(ValueError, match="duplicate"):
        retriever.index([Passage("x", "a"), Passage("x", "b")])


def test_fusion_beta_adds_the_coarse_score(system_dir: Path) -> None:
    retriever = InvarRetriever.from_pretrained(system_dir, show_progress=False)
    passages = demo_passages()
    retriever.index(passages)
    query = ["who discovered penicillin"]
    plain = retriever.search_vectors(retriever.query_vectors(query, beta=0.0), 40)[0]
    fused = retriever.search_vectors(retriever.query_vectors(query, beta=3.0), 40)[0]
    coarse_q = retriever.encoder.coarse(query)[0]
    coarse_d = dict(zip([p.id for p in passages],
                        retriever.encoder.coarse([p.full_text() for p in passages])))
    plain_scores = dict(zip(plain.ids, plain.scores))
    for pid, score in zip(fused.ids, fused.scores):
        assert score == pytest.approx(plain_scores[pid] + 3.0 * coarse_q @ coarse_d[pid],
                                      abs=1e-3)


def test_index_of_another_retriever_is_refused(system_dir: Path, tiny_lm_dir: Path,
                                               tiny_encoder_dir: Path, tmp_path: Path) -> None:
    retriever = InvarRetriever.from_pretrained(system_dir, show_progress=False)
    retriever.index(demo_passages())
    retriever.save(tmp_path / "index-a")
    torch.manual_seed(1)
    other = _encoder(tiny_lm_dir, tiny_encoder_dir, num_soft_tokens=2)
    other_dir = save_retriever(other, tmp_path / "system-b")
    with pytest.raises(ValueError, match="built by retriever .*system.*not by .*system-b"):
        InvarRetriever.from_pretrained(other_dir, index=tmp_path / "index-a")


def test_indexing_resumes_from_saved_chunks(system_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    retriever = InvarRetriever.from_pretrained(system_dir, chunk_size=8, show_progress=False)
    passages = demo_passages()
    real_encode, calls = retriever.encoder.encode, []

    def failing(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(retriever.encoder, "encode", failing)
    with pytest.raises(KeyboardInterrupt):
        retriever.index(passages)
    calls.clear()
    monkeypatch.setattr(retriever.encoder, "encode", lambda *a, **k: calls.append(1)
                        or real_encode(*a, **k))
    retriever.index(passages)
    assert len(calls) == 3  # 40 passages in chunks of 8: two were kept, three remained
    fresh = InvarRetriever.from_pretrained(system_dir, chunk_size=8, show_progress=False)
    assert np.allclose(fresh.passage_vectors(passages), retriever.passage_vectors(passages))


def test_index_cli_and_eval_on_a_system_dir(system_dir: Path, tmp_path: Path, odqa_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from invar_rag_integrations.cli import main

    corpus = odqa_dir / "odqa" / "corpus.jsonl"
    main(["index", "--retriever", str(system_dir), "--corpus", str(corpus)])
    assert "indexed 40 passages" in capsys.readouterr().err
    assert json.loads((system_dir / "index" / "retriever.json").read_text())["kind"] == "invar"
    output = tmp_path / "eval.json"
    main(["eval-retrieval", "--retriever", str(system_dir), "--data-dir", str(odqa_dir),
          "--datasets", "nq", "--output", str(output)])
    rows = json.loads(output.read_text())["rows"]
    assert {r["system"] for r in rows} == {"invar"} and {r["dataset"] for r in rows} == {"nq"}
