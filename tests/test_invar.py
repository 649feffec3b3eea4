"""The Invar scorer, the two-stage Invar retriever and the system directory, on tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from invar_rag_integrations.data import Passage, passage_text
from invar_rag_integrations.demo import demo_passages
from invar_rag_integrations.invar import (
    InvarScorer,
    InvarSettings,
    ScorerSettings,
    TwoStageRetriever,
    fused_score,
)
from invar_rag_integrations.invar.artifacts import load_reranker, save_retriever
from invar_rag_integrations.invar.calibration import pair_features
from invar_rag_integrations.invar.precision import resolve_precision
from invar_rag_integrations.invar.projector import Projector
from invar_rag_integrations.models import load_base_lm
from invar_rag_integrations.retrieval import Retriever
from invar_rag_integrations.system import read_manifest
from invar_rag_integrations.training.catalog import make_retriever

PASSAGES = [Passage("p1", "Alexander Fleming discovered penicillin in 1928.", "Penicillin"),
            Passage("p2", "Mount Everest is the highest mountain on Earth.", "Everest"),
            Passage("p3", "The Nile is the longest river in Africa and flows north.")]


@pytest.fixture()
def lm(tiny_lm_dir: Path):
    return load_base_lm(str(tiny_lm_dir))


def _scorer(lm, **settings) -> InvarScorer:
    model, tokenizer = lm
    return InvarScorer(model, tokenizer, ScorerSettings(**settings), batch_size=2,
                       precision="float32")


def _naive_score(model, tokenizer, scorer: InvarScorer, query: str, passage: Passage) -> float:
    """Full forward of the joined text (a passage that fits is one window, all of it),
    log-softmax over every position."""
    question = scorer.tokens.question(query)
    head, tail = scorer.settings.prompt.split("{passage}")
    ids = tokenizer(f"{head}{passage_text(passage)}{tail} {query}")["input_ids"]
    assert ids[-len(question):] == question
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    start = len(ids) - len(question)
    return float(np.mean([logprobs[start + t - 1, tok].item() for t, tok in enumerate(question)]))


@pytest.fixture()
def zero_shot(tiny_lm_dir: Path, tiny_encoder_dir: Path) -> TwoStageRetriever:
    retriever = TwoStageRetriever.zero_shot(str(tiny_lm_dir), str(tiny_encoder_dir),
                                         InvarSettings(candidates=6, read_first=6),
                                         precision="float32",
                                         show_progress=False)
    retriever.index(demo_passages())
    return retriever


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="passage"):
        ScorerSettings(prompt="no slot here")
    with pytest.raises(ValueError, match="normalization"):
        ScorerSettings(normalization="max")
    with pytest.raises(ValueError, match="stage1"):
        InvarSettings(stage1="bm25")
    with pytest.raises(ValueError, match="tau"):
        InvarSettings(tau=0)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int4", torch.device("cpu"))


def test_scores_equal_the_naive_full_forward_for_every_padding(lm) -> None:
    model, tokenizer = lm
    scorer = _scorer(lm)
    queries = ["who discovered penicillin", "what is the highest mountain on the planet earth"]
    batched = scorer.score_batch(queries, [PASSAGES, PASSAGES[:2]])
    assert [len(s) for s in batched] == [3, 2]
    for query, scores in zip(queries, batched):
        for passage, value in zip(PASSAGES, scores):
            assert value == pytest.approx(_naive_score(model, tokenizer, scorer, query, passage),
                                          abs=1e-4)
    assert scorer.score("who discovered penicillin", []).shape == (0,)


def test_sum_normalization_is_mean_times_question_length(lm) -> None:
    mean, total = _scorer(lm), _scorer(lm, normalization="sum")
    length = len(mean.tokens.question("who discovered penicillin"))
    assert total.score("who discovered penicillin", PASSAGES) == pytest.approx(
        mean.score("who discovered penicillin", PASSAGES) * length, rel=1e-4)


def test_long_queries_keep_their_last_tokens_and_warn_once(lm) -> None:
    short_queries = _scorer(lm, max_query_tokens=4)
    question = "please tell me " * 5 + "who found penicillin"
    with pytest.warns(UserWarning, match="query text .* truncated to its last 4"):
        ids = short_queries.tokens.question(question)
    assert ids == _scorer(lm).tokens.question(question)[-4:]
    assert short_queries.tokens.truncated == {"query": 1}


def test_bos_is_added_only_for_tokenizers_that_use_it(lm) -> None:
    _, tokenizer = lm
    assert _scorer(lm).tokens.bos == []  # the tiny tokenizer adds no BOS, like SmolLM2
    tokenizer.add_bos_token = True  # a Gemma-like tokenizer
    tokenizer._tokenizer.post_processor = __import__("tokenizers").processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    assert _scorer(lm).tokens.bos == [tokenizer.bos_token_id]


def test_bf16_serving_copy_follows_the_weights_and_scores_like_autocast(lm) -> None:
    model, tokenizer = lm
    scorer = InvarScorer(model, tokenizer, ScorerSettings(), precision="bfloat16")
    copy = scorer.serving_model()
    assert copy is not model and copy.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.get_input_embeddings().weight.dtype == torch.float32  # the shared LM stays
    assert scorer.serving_model() is copy  # made once
    served = scorer.score("who discovered penicillin", PASSAGES)
    question = [scorer.tokens.question("who discovered penicillin")] * 3
    passages = [windows[0] for windows in scorer.tokens.windows("who", PASSAGES)[0]]
    with torch.no_grad():
        autocast = scorer.pair_scores(question, passages).numpy()  # the training path
    assert np.allclose(served, autocast, atol=0.05)
    with torch.no_grad():  # an in-place update (an optimizer step) makes a new copy
        model.get_input_embeddings().weight.mul_(1.5)
    assert scorer.serving_model() is not copy
    assert not np.allclose(scorer.score("who discovered penicillin", PASSAGES), served,
                           atol=1e-3)
    assert _scorer(lm).serving_model() is model  # float32: no copy


def test_a_lora_at_zero_scores_like_the_base_model_and_trains_only_its_weights(lm) -> None:
    from peft import get_peft_model

    from invar_rag_integrations.models.adapters import lora_config

    model, tokenizer = lm
    base = _scorer(lm).score("who discovered penicillin", PASSAGES)
    peft_model = get_peft_model(model, lora_config(model, 4, 8, 0.0, ["q_proj", "v_proj"]),
                                adapter_name="retriever")
    scorer = InvarScorer(peft_model, tokenizer, ScorerSettings(), "retriever",
                         precision="float32")
    assert np.allclose(scorer.score("who discovered penicillin", PASSAGES), base, atol=1e-5)
    ids = scorer.tokens.question("who discovered penicillin")
    scorer.pair_scores([ids], [scorer.tokens.node("penicillin").body]).sum().backward()
    trained = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)


def test_soft_tokens_read_the_coarse_vectors_and_train_the_projector(lm) -> None:
    model, tokenizer = lm
    settings = ScorerSettings(num_soft_tokens=2, projector_hidden=8)
    projector = Projector.for_model(model, 4, settings)
    scorer = InvarScorer(model, tokenizer, settings, projector=projector, precision="float32")
    with pytest.raises(ValueError, match="coarse"):
        scorer.score("who discovered penicillin", PASSAGES)
    query = np.ones((1, 4), np.float32)
    a = scorer.score_batch(["q"], [PASSAGES], query, [np.zeros((3, 4), np.float32)])[0]
    b = scorer.score_batch(["q"], [PASSAGES], query, [np.ones((3, 4), np.float32)])[0]
    assert not np.allclose(a, b)
    ids = scorer.tokens.question("q")
    scorer.pair_scores([ids], [scorer.tokens.node("x").body], torch.ones(1, 4),
                       torch.ones(1, 4)).sum().backward()
    assert all(p.grad is not None for p in projector.parameters())


def test_two_stage_ranks_by_the_fused_score_and_scores_the_calibrated_probability(
        zero_shot) -> None:
    query = "who discovered penicillin"
    [proposed] = zero_shot.candidates([query])
    by_id = {p.id: p for p in demo_passages()}
    nodes = [by_id[i] for i in proposed.ids]
    r = zero_shot.scorer.score(query, nodes)
    coarse_q = zero_shot.reranker.coarse([query])[0]
    coarse_d = zero_shot.reranker.coarse([p.full_text() for p in nodes])
    [bm25] = zero_shot.bm25_term([query], [proposed.ids])
    assert bm25.max() <= 1.0 and bm25.min() >= 0.0
    fused = fused_score(r, coarse_d @ coarse_q, zero_shot.settings.cos_weight,
                        zero_shot.settings.tau, bm25, zero_shot.settings.bm25_weight)
    prior, _ = zero_shot.scorer.prior([query])
    table = pair_features(zero_shot.settings, r, prior[0], coarse_d @ coarse_q,
                          zero_shot.scorer.node_lengths(nodes),
                          bm25, np.arange(len(nodes)), proposed.scores)
    probability = zero_shot.reranker.calibration.probabilities("retriever", table,
                                                               np.ones(len(nodes), bool))
    assert ((probability > 0) & (probability < 1)).all()
    [result] = zero_shot.search([query], 6)
    assert result.ids == [proposed.ids[j] for j in np.argsort(-fused, kind="stable")]
    assert result.scores == sorted(result.scores, reverse=True)  # the same order: s's
    expected = dict(zip(proposed.ids, probability))
    assert np.allclose(result.scores, [expected[i] for i in result.ids], atol=1e-4)


def test_reranker_orders_any_candidates_and_handles_edge_cases(zero_shot) -> None:
    reranker = zero_shot.reranker
    ranked = reranker.rerank("who discovered penicillin", PASSAGES, top_n=2)
    assert len(ranked) == 2 and 1 > ranked[0][1] >= ranked[1][1] > 0
    assert reranker.rerank("who discovered penicillin", []) == []
    with pytest.raises(ValueError, match="empty"):
        reranker.rerank(" ", PASSAGES)
    with pytest.raises(ValueError, match="top_n"):
        reranker.rerank("q", PASSAGES, top_n=0)


def test_bad_requests_use_the_retriever_interface_errors(zero_shot) -> None:
    with pytest.raises(ValueError, match="k = 7 is larger than .*candidates = 6"):
        zero_shot.search(["who discovered penicillin"], 7)
    with pytest.raises(ValueError, match="empty"):
        zero_shot.search([" "], 3)
    with pytest.raises(ValueError, match="positive"):
        zero_shot.search(["q"], 0)
    with pytest.raises(ValueError, match="duplicate"):
        zero_shot.index([Passage("x", "a"), Passage("x", "b")])
    assert zero_shot.search([], 3) == []


def test_index_saves_and_loads_with_its_passages(zero_shot, tmp_path: Path) -> None:
    query = ["who discovered penicillin", "capital of france"]
    before = zero_shot.search(query, 5)
    system = save_retriever(zero_shot.reranker, tmp_path / "system")
    zero_shot.system_dir = system.resolve()
    zero_shot.save(system / "index")
    assert (system / "index" / "passages.jsonl").is_file()
    again = make_retriever(str(system))  # a system directory with its saved index
    assert again.passage_ids == [p.id for p in demo_passages()]
    found = again.search(query, 5)  # precision auto: bf16 where the CPU has it, near ties swap
    assert [sorted(r.ids) for r in found] == [sorted(r.ids) for r in before]
    assert np.allclose([r.scores for r in found], [r.scores for r in before], atol=0.05)
    loaded = Retriever.load(system / "index")  # the index folder alone
    assert isinstance(loaded, TwoStageRetriever)
    assert np.allclose(sorted(loaded.search(query, 5)[0].scores), sorted(before[0].scores),
                       atol=0.05)


def test_an_index_of_another_corpus_or_stage1_is_refused(zero_shot, tmp_path: Path,
                                                         tiny_lm_dir: Path,
                                                         tiny_encoder_dir: Path) -> None:
    system = save_retriever(zero_shot.reranker, tmp_path / "system")
    zero_shot.save(tmp_path / "index")
    lines = (tmp_path / "index" / "passages.jsonl").read_text().splitlines()
    (tmp_path / "index" / "passages.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="not the corpus this index was built over"):
        TwoStageRetriever.from_pretrained(system, index=tmp_path / "index")
    zero_shot.save(tmp_path / "index-rrf")
    dense_only = TwoStageRetriever.zero_shot(str(tiny_lm_dir), str(tiny_encoder_dir),
                                          InvarSettings(stage1="minilm", bm25_weight=0.0),
                                          show_progress=False)
    with pytest.raises(ValueError, match="built for stage 1 'rrf'.*uses 'minilm'"):
        dense_only.load_index(tmp_path / "index-rrf")
    manifest = read_manifest(system)
    manifest["retriever"]["settings"]["max_passage_tokens"] = 64
    (system / "invar_rag.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="differ from the ones the manifest"):
        TwoStageRetriever.from_pretrained(system)  # the settings no longer match the hash


def test_system_dir_with_an_adapter_round_trips_and_checks_its_identity(
        zero_shot, tmp_path: Path, tiny_lm_dir: Path) -> None:
    from peft import get_peft_model

    from invar_rag_integrations.models.adapters import lora_config

    scorer = zero_shot.scorer
    scorer.lm = get_peft_model(scorer.lm, lora_config(scorer.lm, 4, 8, 0.0, ["q_proj", "v_proj"]),
                               adapter_name="retriever")
    scorer.adapter = "retriever"
    with torch.no_grad():  # move the adapter away from zero
        for name, parameter in scorer.lm.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)
    system = save_retriever(zero_shot.reranker, tmp_path / "system", {"note": "test"},
                            {"score": 1.0})
    manifest = read_manifest(system)
    assert manifest["retriever"]["adapter"] == "retriever"
    assert manifest["training"]["retriever"] == {"note": "test"}
    loaded, _ = load_reranker(system, precision="float32")
    assert np.allclose(loaded.scorer.score("who discovered penicillin", PASSAGES),
                       scorer.score("who discovered penicillin", PASSAGES), atol=1e-5)
    other = tmp_path / "other-llama"
    shutil.copytree(tiny_lm_dir, other)
    with pytest.raises(ValueError, match="trained on base model .*tiny-llama.*other-llama"):
        load_reranker(system, base_model=str(other))
    from safetensors.torch import load_file, save_file

    weights = system / "retriever" / "adapter_model.safetensors"
    state = load_file(str(weights))
    save_file({k: v + 1 for k, v in state.items()}, str(weights))
    with pytest.raises(ValueError, match="differ"):
        load_reranker(system)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model"):
        load_reranker(system)


def test_index_cli_and_eval_on_a_system_dir(zero_shot, tmp_path: Path, odqa_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from invar_rag_integrations.cli import main

    system = save_retriever(zero_shot.reranker, tmp_path / "system")
    corpus = odqa_dir / "odqa" / "corpus.jsonl"
    main(["index", "--retriever", str(system), "--corpus", str(corpus)])
    assert "indexed 40 passages" in capsys.readouterr().err
    assert json.loads((system / "index" / "retriever.json").read_text())["kind"] == "invar"
    output = tmp_path / "eval.json"
    main(["eval-retrieval", "--retriever", str(system), "--data-dir", str(odqa_dir),
          "--datasets", "nq", "--output", str(output), "--candidates", "5"])
    assert "Acc@k for k > 5 is left out" in capsys.readouterr().err
    rows = json.loads(output.read_text())["rows"]
    assert {r["system"] for r in rows} == {"upr-zero-shot"} and {r["dataset"] for r in rows} \
        == {"nq"}
    assert {r["metric"] for r in rows} == {"acc@1", "acc@5"}


def test_init_system_writes_the_zero_shot_retriever_and_keeps_the_generator_entry(
        tmp_path: Path, tiny_lm_dir: Path, tiny_encoder_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from invar_rag_integrations.cli import main
    from invar_rag_integrations.system import write_manifest

    system = tmp_path / "system"
    system.mkdir()
    write_manifest(system, {"format": "invar-rag/1", "generator": {"adapter": "generator"}})
    main(["init-system", str(system), "--base-model", str(tiny_lm_dir), "--coarse-encoder",
          str(tiny_encoder_dir), "--stage1", "minilm", "--candidates", "4", "--read-first", "3"])
    assert "next: invar-rag index" in capsys.readouterr().err
    manifest = read_manifest(system)
    assert manifest["generator"] == {"adapter": "generator"}
    assert manifest["retriever"]["adapter"] is None
    assert "init-system" in manifest["training"]["retriever"]["command"]
    retriever = TwoStageRetriever.from_pretrained(system, precision="float32", show_progress=False)
    assert retriever.name == "upr-zero-shot"
    assert (retriever.settings.stage1, retriever.settings.candidates,
            retriever.settings.bm25_weight, retriever.settings.read_first) == ("minilm", 4, 0.0, 3)
    retriever.index(demo_passages())
    [result] = retriever.search(["who discovered penicillin"], 4)
    assert len(result.ids) == 4


def test_a_head_starts_at_zero_reads_the_question_states_and_round_trips(
        zero_shot, tmp_path: Path) -> None:
    scorer = zero_shot.scorer
    query = "who discovered penicillin"
    base = scorer.score(query, PASSAGES)
    likelihood, features = scorer.likelihoods_and_features([query], [PASSAGES])
    assert np.allclose(likelihood[0], base, atol=1e-5)
    assert features[0].shape == (3, scorer.lm.get_input_embeddings().embedding_dim)
    zero_shot.settings.head = True
    headed = InvarScorer(scorer.lm, scorer.tokenizer, zero_shot.settings.scorer_settings(),
                         precision="float32")
    assert np.allclose(headed.score(query, PASSAGES), base, atol=1e-5)  # zero-initialised
    with torch.no_grad():
        headed.head.weight.fill_(0.01)
    expected = base + features[0] @ headed.head.weight[0].detach().numpy() + headed.head.bias.item()
    assert np.allclose(headed.score(query, PASSAGES), expected, atol=1e-4)
    zero_shot.reranker.scorer = headed
    system = save_retriever(zero_shot.reranker, tmp_path / "system")
    assert read_manifest(system)["retriever"]["head"] == "head.safetensors"
    loaded, _ = load_reranker(system, precision="float32")
    assert np.allclose(loaded.scorer.score(query, PASSAGES), expected, atol=1e-4)
    (system / "head.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="head.safetensors"):
        load_reranker(system)


def test_a_two_stage_query_encodes_once_and_runs_bm25_once(zero_shot) -> None:
    """Stage 1 hands its query vector and BM25 scores to stage 2: one MiniLM encoding and one
    BM25 pass per query, for the search and for the fused score's terms."""
    from invar_rag_integrations.retrieval.stage1 import bm25_part

    zero_shot.index(PASSAGES)
    calls = {"encode": [], "bm25": 0}
    encoder, bm25 = zero_shot.coarse_encoder, bm25_part(zero_shot.stage1)._bm25
    encode, get_scores = encoder.encode, bm25.get_scores

    def counted_encode(*args, **kwargs):
        calls["encode"].append(list(kwargs["inputs"] if "inputs" in kwargs else args[0]))
        return encode(*args, **kwargs)

    def counted_scores(*args, **kwargs):
        calls["bm25"] += 1
        return get_scores(*args, **kwargs)

    encoder.encode, bm25.get_scores = counted_encode, counted_scores
    try:
        queries = ["who discovered penicillin", "the highest mountain"]
        found = zero_shot.search(queries, 2)
    finally:
        del encoder.encode, bm25.get_scores
    assert calls["encode"] == [queries] and calls["bm25"] == len(queries)
    assert [r.ids[0] for r in found] == [r.ids[0] for r in zero_shot.search(queries, 2)]


def test_stage_one_alone_checks_its_input(zero_shot, tiny_lm_dir: Path,
                                          tiny_encoder_dir: Path) -> None:
    with pytest.raises(ValueError, match="empty or whitespace"):
        zero_shot.candidates(["who discovered penicillin", " "])
    fresh = TwoStageRetriever.zero_shot(str(tiny_lm_dir), str(tiny_encoder_dir),
                                        precision="float32", show_progress=False)
    with pytest.raises(RuntimeError, match="has no index: call index"):
        fresh.candidates(["who discovered penicillin"])
