"""``invar-rag serve``: a real vLLM server (CPU) for the shipped system, its OpenAI-compatible
clients in LangChain and LlamaIndex, and a clean stop; plus its checks without a server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import free_port

from invar_rag_integrations.demo import SHIPPED_SYSTEM, demo_passages, demo_questions
from invar_rag_integrations.serving import VLLMServer, _flags, system_models, wait_for_server


def test_engine_settings_become_serve_flags():
    assert _flags({"dtype": "float32", "enable_lora": True, "enforce_eager": False,
                   "lora_target_modules": ["q_proj", "v_proj"], "max_loras": 2}) == \
        ["--dtype", "float32", "--enable-lora", "--lora-target-modules", "q_proj", "v_proj",
         "--max-loras", "2"]


def test_an_unreachable_server_is_a_clear_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConnectionError, match=rf"no vLLM server answered at {url[:-3]}/health "
                                              r"after \d+ tries"):
        wait_for_server(url, timeout=1.5)


def test_a_system_without_adapters_has_nothing_to_serve(tmp_path):
    from invar_rag_integrations.system import read_manifest

    manifest = read_manifest(SHIPPED_SYSTEM)
    del manifest["generator"]
    (tmp_path / "invar_rag.json").write_text(__import__("json").dumps(manifest))
    with pytest.raises(ValueError, match="holds no adapter to serve"):
        system_models(tmp_path)


@pytest.mark.model
def test_a_port_in_use_is_refused_before_anything_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = VLLMServer(SHIPPED_SYSTEM, port=taken.getsockname()[1])
        with pytest.raises(OSError, match="already in use"):
            server.start()
        assert server.process is None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("vllm", reason="the vllm extra is not installed (make install-vllm)")
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with VLLMServer(SHIPPED_SYSTEM, port=free_port(), api_key="test-key", log=log,
                    engine_args=["--max-model-len", "2048"], startup_timeout=600) as running:
        group = running.process.pid
        assert "test-key" not in " ".join(running.process.args)  # it travels in the environment
        yield running
    assert live_members(group) == []  # stopped: no process of its group is left running


def live_members(group: int) -> list[int]:
    """Processes of process group ``group`` that are not zombies (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture(scope="module")
def prompts(shipped_rag):
    questions = [q.question for q in demo_questions()[:4]]
    sources = shipped_rag.retrieve_batch(questions)
    return questions, [shipped_rag.prompt(q, s).text for q, s in zip(questions, sources)]


@pytest.mark.model
@pytest.mark.vllm
@pytest.mark.slow
class TestServed:
    def test_lists_the_adapter_and_base_model_and_wants_the_key(self, server):
        import openai

        from invar_rag_integrations.serving import served_models

        assert server.models == ["generator", "smollm2"]
        assert sorted(served_models(server.url, "test-key")) == ["generator", "smollm2"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url, api_key="wrong").models.list()

    def test_langchain_and_llamaindex_clients_answer_like_the_hf_system(self, server,
                                                                        shipped_rag, prompts):
        from langchain_openai import OpenAI
        from llama_index.llms.openai_like import OpenAILike

        questions, texts = prompts
        expected = [a.text for a in shipped_rag.answer_batch(questions)]
        max_tokens = shipped_rag.settings.max_new_tokens
        langchain = OpenAI(model="generator", base_url=server.url, api_key="test-key",
                           temperature=0, max_tokens=max_tokens, model_kwargs={"stop": ["\n"]})
        assert [t.strip() for t in langchain.batch(texts)] == expected
        llama = OpenAILike(model="generator", api_base=server.url, api_key="test-key",
                           is_chat_model=False, temperature=0, max_tokens=max_tokens,
                           context_window=2048, additional_kwargs={"stop": ["\n"]})
        assert [llama.complete(t).text.strip() for t in texts] == expected

    def test_rag_chain_and_query_engine_retrieve_in_process_and_generate_on_the_server(
            self, server, shipped_rag, prompts):
        from langchain_openai import OpenAI
        from llama_index.core import Settings, VectorStoreIndex
        from llama_index.core.schema import TextNode
        from llama_index.llms.openai_like import OpenAILike

        from invar_rag_integrations.langchain import InvarRetriever, build_rag_chain
        from invar_rag_integrations.llama_index import InvarEmbedding, qa_template

        questions, _ = prompts
        k = shipped_rag.settings.k
        expected = shipped_rag.answer(questions[0])
        llm = OpenAI(model="generator", base_url=server.url, api_key="test-key",
                     temperature=0, max_tokens=shipped_rag.settings.max_new_tokens,
                     model_kwargs={"stop": ["\n"]})
        chain = build_rag_chain(InvarRetriever(retriever=shipped_rag.retriever, k=k), llm,
                                template=shipped_rag.template)
        result = chain.invoke(questions[0])
        assert [d.id for d in result["source_documents"]] == \
            [s.passage.id for s in expected.sources]
        assert result["answer"].strip() == expected.text

        served = OpenAILike(model="generator", api_base=server.url, api_key="test-key",
                            is_chat_model=False, temperature=0, max_tokens=24,
                            context_window=2048, additional_kwargs={"stop": ["\n"]})
        nodes = [TextNode(id_=p.id, text=p.text, metadata={"title": p.title})
                 for p in demo_passages()]
        Settings.embed_model = InvarEmbedding(shipped_rag.retriever)
        index = VectorStoreIndex(nodes)
        engine = index.as_query_engine(llm=served, text_qa_template=qa_template(
            shipped_rag.template), similarity_top_k=k)
        response = engine.query(questions[0])
        assert response.source_nodes and str(response).strip()


def test_engine_settings_hold_every_adapter_beside_the_base_model():
    from invar_rag_integrations.generation.vllm_backend import engine_options

    adapters = {"generator": SHIPPED_SYSTEM / "generator"}
    options = engine_options(adapters, on_cpu=True)
    assert options["dtype"] == "float32" and options["max_loras"] == 2
    assert options["max_lora_rank"] == 8
    assert options["lora_target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]  # its own
    assert engine_options({}, on_cpu=False) == {"dtype": "auto", "seed": 0}
    with pytest.raises(ValueError, match="max_loras = 1 is too small for 1 adapter"):
        engine_options(adapters, on_cpu=True, max_loras=1)
    with pytest.raises(ValueError, match="'generator' has rank 8, above the engine's "
                                         "max_lora_rank 1"):
        engine_options(adapters, on_cpu=True, max_lora_rank=1)
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter folder"):
        engine_options({"x": SHIPPED_SYSTEM}, on_cpu=True)


def test_a_shorter_engine_context_cuts_the_prompt_budget():
    from invar_rag_integrations.generation.artifacts import GeneratorSettings

    settings = GeneratorSettings(max_new_tokens=24, max_prompt_tokens=512)
    assert settings.prompt_budget(8192) == 512
    assert settings.prompt_budget(300) == 276
    assert GeneratorSettings(max_new_tokens=24).prompt_budget(300) == 276


@pytest.mark.model
def test_the_merged_server_serves_the_merged_copy_as_generator_alone():
    pytest.importorskip("vllm", reason="the vllm extra is not installed (make install-vllm)")
    lora = VLLMServer(SHIPPED_SYSTEM).command()
    merged = VLLMServer(SHIPPED_SYSTEM, merge=True).command()
    assert "--lora-modules" in lora and "--enable-lora" in lora
    assert "--lora-modules" not in merged and "--enable-lora" not in merged
    model = Path(merged[merged.index("--model") + 1])
    assert (model / "config.json").is_file() and model != VLLMServer(SHIPPED_SYSTEM).base.path
    assert merged[merged.index("--served-model-name") + 1] == "generator"
