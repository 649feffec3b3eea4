"""The vLLM backend against the HF + peft backend on the shipped system (real SmolLM2 and its
generator adapter, vLLM's CPU engine); skipped where vLLM is not installed."""

from __future__ import annotations

import pytest

from invar_rag_integrations.demo import SHIPPED_SYSTEM, demo_passages, demo_questions
from invar_rag_integrations.generation.artifacts import GENERATOR_ADAPTER, generator_entry

pytest.importorskip("vllm", reason="the vllm extra is not installed (make install-vllm)")
pytestmark = [pytest.mark.model, pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def hf_rag(shipped_rag):
    return shipped_rag


@pytest.fixture(scope="module")
def engine(hf_rag):
    from invar_rag_integrations.generation.vllm_backend import VLLMGenerator

    base = hf_rag.generator.model.get_base_model().invar_source
    folder = generator_entry(SHIPPED_SYSTEM, {"name": base.name, "identity": base.identity})[0]
    generator = VLLMGenerator(base.path, {GENERATOR_ADAPTER: folder}, max_model_len=2048)
    yield generator
    generator.shutdown()


@pytest.fixture(scope="module")
def prompts(hf_rag):
    questions = [q.question for q in demo_questions()[:6]]
    return [hf_rag.prompt(q, s).text for q, s in zip(questions, hf_rag.retrieve_batch(questions))]


def test_greedy_adapter_output_equals_hf_peft_token_for_token(hf_rag, engine, prompts):
    options = {"max_new_tokens": 16, "stop": (), "adapter": GENERATOR_ADAPTER}
    expected = hf_rag.generator.generate(prompts, **options)
    found = engine.generate(prompts, **options)
    assert [g.text for g in found] == [g.text for g in expected]
    assert [g.num_tokens for g in found] == [g.num_tokens for g in expected]


def test_answer_log_probabilities_through_vllm_equal_the_hf_ones(hf_rag, engine, prompts):
    options = {"max_new_tokens": 16, "adapter": GENERATOR_ADAPTER}
    expected = hf_rag.generator.generate(prompts, **options)
    found = engine.generate(prompts, **options)
    assert [g.logprob for g in found] == pytest.approx([g.logprob for g in expected], abs=0.1)
    answers = [g.text for g in expected]
    served = engine.answer_logprobs(prompts, answers, GENERATOR_ADAPTER)
    local = hf_rag.generator.answer_logprobs(prompts, answers, GENERATOR_ADAPTER)
    assert [n for _, n in served] == [n for _, n in local]
    assert [s for s, _ in served] == pytest.approx([s for s, _ in local], abs=0.1)


def test_base_model_in_a_mixed_batch_equals_the_base_model_alone(hf_rag, engine, prompts):
    options = {"max_new_tokens": 16, "stop": ()}
    alone = engine.generate(prompts, **options)
    mixed = engine.generate(prompts + prompts, **options,
                            adapter=[None] * len(prompts) + [GENERATOR_ADAPTER] * len(prompts))
    assert [g.text for g in mixed[:len(prompts)]] == [g.text for g in alone]
    assert [g.text for g in alone] == [g.text for g in hf_rag.generator.generate(prompts,
                                                                                 **options)]
    assert [g.text for g in mixed[len(prompts):]] != [g.text for g in alone]  # the adapter acts


def test_answers_through_vllm_equal_the_hf_system_and_stream_joins_to_them(hf_rag, engine):
    from invar_rag_integrations.rag import RAGPipeline

    served = RAGPipeline(engine, hf_rag.retriever, demo_passages(), hf_rag.settings,
                         hf_rag.template, GENERATOR_ADAPTER)
    questions = [q.question for q in demo_questions()]
    expected = hf_rag.answer_batch(questions)
    answers = served.answer_batch(questions)
    assert [a.text for a in answers] == [a.text for a in expected]
    assert [s.passage.id for s in answers[0].sources] == \
        [s.passage.id for s in expected[0].sources]
    assert "".join(served.stream(questions[0])) == answers[0].text
    assert served.complete(served.prompt(questions[1], answers[1].sources).text) == \
        answers[1].text


def test_the_merged_generator_answers_like_the_adapter(hf_rag, prompts):
    from invar_rag_integrations.generation.vllm_backend import VLLMGenerator, merged_model

    base = hf_rag.generator.model.get_base_model().invar_source
    folder = generator_entry(SHIPPED_SYSTEM, {"name": base.name, "identity": base.identity})[0]
    merged = VLLMGenerator(merged_model(base.path, folder), merged=GENERATOR_ADAPTER,
                           max_model_len=2048)
    try:
        options = {"max_new_tokens": 16, "stop": (), "adapter": GENERATOR_ADAPTER}
        assert [g.text for g in merged.generate(prompts, **options)] == \
            [g.text for g in hf_rag.generator.generate(prompts, **options)]
        with pytest.raises(ValueError, match="the base model is not loaded"):
            merged.generate(["x"])
    finally:
        merged.shutdown()


def test_unknown_adapter_names_the_loaded_ones(engine):
    with pytest.raises(ValueError, match=r"unknown adapter 'retriever'.*\['generator'\]"):
        engine.generate(["x"], adapter="retriever")


def test_scorer_through_the_engine_equals_the_hf_scorer(engine):
    from invar_rag_integrations.invar import TwoStageRetriever

    scorer = TwoStageRetriever.zero_shot(precision="float32", show_progress=False).scorer
    questions = [q.question for q in demo_questions()[:3]]
    candidates = [demo_passages()[:5]] * len(questions)
    expected = scorer.score_batch(questions, candidates)
    scorer.use_engine(engine)
    found = scorer.score_batch(questions, candidates)
    for e, f in zip(expected, found):
        assert abs(e - f).max() < 1e-4
    with pytest.raises(ValueError, match="keeps passage states in its own prefix cache"):
        scorer.use_passage_cache(10)
    scorer.settings.normalization = "sum"
    summed = scorer.score_batch(questions, candidates)
    assert abs(summed[0] / found[0]).min() > 1  # more than one question token each
    scorer.use_engine(None)
    assert abs(scorer.score_batch(questions, candidates)[0] - summed[0]).max() < 1e-3
    scorer.use_passage_cache(10)
    with pytest.raises(ValueError, match="turn the passage cache off"):
        scorer.use_engine(engine)
    scorer.use_passage_cache(None)
    with pytest.raises(ValueError, match="unknown adapter 'retriever'"):
        scorer.adapter = "retriever"
        scorer.use_engine(engine)


def test_lsr_scores_through_the_engine_equal_the_hf_scores(engine):
    from invar_rag_integrations.models import load_base_lm
    from invar_rag_integrations.training.lsr import LSRScorer, lsr_prompt

    lm, tokenizer = load_base_lm("smollm2")
    pairs = [(lsr_prompt(p.full_text(), q.question), q.answers[0])
             for q in demo_questions()[:3] for p in demo_passages()[:4]]
    expected = LSRScorer(lm, tokenizer, None, show_progress=False).score(pairs)
    found = LSRScorer(lm, tokenizer, None, show_progress=False, engine=engine).score(pairs)
    assert abs(found - expected).max() < 1e-3


def test_the_rerank_service_scores_through_a_vllm_engine_in_the_hf_order(tmp_path):
    import httpx
    from conftest import free_port

    from invar_rag_integrations.data import passage_text
    from invar_rag_integrations.invar.artifacts import load_reranker
    from invar_rag_integrations.rerank_service import RerankServer

    documents = [passage_text(p) for p in demo_passages()[:6]]
    documents.append(" ".join(documents))  # longer than the scorer's window: read as windows
    questions = [q.question for q in demo_questions()[:3]]
    reranker = load_reranker(SHIPPED_SYSTEM, precision="float32")[0]  # vLLM's on a CPU
    with RerankServer(SHIPPED_SYSTEM, port=free_port(), log=tmp_path / "server.log",
                      scorer_engine="vllm", engine_args=["--max-model-len", "2048"]) as server:
        assert httpx.get(server.root_url + "/health").json()["scorer_engine"] == "vllm"
        for question in questions:
            answer = httpx.post(server.root_url + "/v1/rerank", timeout=300,
                                json={"query": question, "documents": documents})
            assert answer.status_code == 200, answer.text
            found = [(r["index"], r["relevance_score"]) for r in answer.json()["results"]]
            expected = reranker.rerank(question, documents)
            assert [i for i, _ in found] == [i for i, _ in expected]
            assert max(abs(f[1] - e[1]) for f, e in zip(found, expected)) < 1e-3
