"""The rerank service: the Cohere and Jina reranker clients of LlamaIndex and LangChain against a
live server on 127.0.0.1 (same order as the in-process reranker), cross-request batching, and
each fault answered while the server keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import free_port

from invar_rag_integrations.rerank_service import (
    RequestBatcher,
    RerankServer,
    ServiceSettings,
    create_app,
)
from invar_rag_integrations.rerank_service.handler import RerankHandler

KEY = "test-key"
MODEL = "invar-reranker"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERY = "Who discovered penicillin?"
LONG = " ".join(["The river flows past the old mill and the lake."] * 40) + \
    " Alexander Fleming discovered penicillin in 1928."
DOCS = ["Paris is the capital of France.", "Alexander Fleming discovered penicillin in 1928.",
        "Mount Everest is the highest mountain on Earth.", LONG,
        "Python is a programming language.", ""]


@pytest.fixture(scope="module")
def core(tiny_rag_system):
    from invar_rag_integrations.invar.artifacts import load_reranker

    return load_reranker(tiny_rag_system, precision="float32")[0]


class HookedScore:
    """The real scorer call, with a gate that holds batches and a query that makes it raise;
    records each batch's queries."""

    def __init__(self, score):
        self.score, self.gate, self.batches = score, threading.Event(), []
        self.gate.set()

    def __call__(self, queries, documents, top_n):
        self.batches.append(list(queries))
        assert self.gate.wait(60), "the test never opened the gate"
        if "explode" in queries:
            raise RuntimeError("the scorer broke")
        return self.score(queries, documents, top_n)


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free loopback port; its root URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def live(core):
    hooked = HookedScore(RerankHandler(core, ServiceSettings()).score)
    settings = ServiceSettings(model_name=MODEL, api_key=KEY, max_documents=8,
                               max_document_chars=3000, max_query_chars=200,
                               max_body_bytes=100_000, max_wait_ms=20)
    app = create_app(core, settings, RequestBatcher(hooked, settings.max_batch_pairs,
                                                    settings.max_wait_ms))
    with running(app) as url:
        yield url, hooked


def rerank(url: str, payload: dict, path: str = "/v1/rerank", **kwargs) -> httpx.Response:
    body = {"model": MODEL, "query": QUERY, "documents": DOCS, **payload}
    kwargs.setdefault("timeout", 60)
    return httpx.post(url + path, json=body, headers=kwargs.pop("headers", AUTH), **kwargs)


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=5).json()


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def assert_serving(url: str) -> None:
    answer = rerank(url, {"top_n": 2})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 2


# --- the clients users already have -------------------------------------------------------------

def in_process_order(core, top_n: int) -> list[tuple[int, float]]:
    return core.rerank(QUERY, DOCS, top_n)


def test_llamaindex_cohere_rerank_gets_the_invar_order(live, core):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    from invar_rag_integrations.llama_index import InvarReranker

    url, _ = live
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.0)
             for i, t in enumerate(DOCS)]
    client = CohereRerank(top_n=3, model=MODEL, api_key=KEY, base_url=url, max_retries=1)
    remote = client.postprocess_nodes(nodes, QueryBundle(QUERY))
    local = InvarReranker(core, top_n=3).postprocess_nodes(
        [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.0)
         for i, t in enumerate(DOCS)], QueryBundle(QUERY))
    assert [n.node.node_id for n in remote] == [n.node.node_id for n in local]
    assert [n.score for n in remote] == pytest.approx([n.score for n in local], rel=1e-5)
    assert all(0.0 <= n.score <= 1.0 for n in remote)  # relevance probabilities


def test_llamaindex_jina_rerank_gets_the_invar_order(live, core):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    url, _ = live
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in DOCS]
    remote = JinaRerank(top_n=4, model=MODEL, api_key=KEY, base_url=f"{url}/v1") \
        .postprocess_nodes(nodes, QueryBundle(QUERY))
    expected = in_process_order(core, 4)
    assert [n.node.get_content() for n in remote] == [DOCS[i] for i, _ in expected]
    assert [n.score for n in remote] == pytest.approx([s for _, s in expected], rel=1e-5)


def test_langchain_cohere_rerank_gets_the_invar_order(live, core):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    url, _ = live
    documents = [Document(page_content=t, metadata={"n": i}) for i, t in enumerate(DOCS)]
    compressed = CohereRerank(base_url=url, cohere_api_key=KEY, model=MODEL, top_n=3) \
        .compress_documents(documents, QUERY)
    expected = in_process_order(core, 3)
    assert [d.metadata["n"] for d in compressed] == [i for i, _ in expected]
    assert [d.metadata["relevance_score"] for d in compressed] == \
        pytest.approx([s for _, s in expected], rel=1e-5)
    assert all(0.0 <= d.metadata["relevance_score"] <= 1.0 for d in compressed)


def test_llamaindex_tei_rerank_gets_the_invar_order(live, core):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    url, _ = live
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in DOCS]
    remote = TextEmbeddingInference(top_n=4, base_url=url, auth_token=f"Bearer {KEY}") \
        .postprocess_nodes(nodes, QueryBundle(QUERY))
    expected = in_process_order(core, 4)
    assert [n.node.get_content() for n in remote] == [DOCS[i] for i, _ in expected]
    assert [n.score for n in remote] == pytest.approx([s for _, s in expected], rel=1e-5)
    assert all(0.0 <= n.score <= 1.0 for n in remote)


# --- the schema -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_every_rerank_path_answers_the_schema_best_first(live, core, path):
    url, _ = live
    documents = [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]]
    answer = rerank(url, {"documents": documents, "top_n": 0}, path)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == MODEL and body["id"].startswith("rerank-")
    expected = in_process_order(core, len(DOCS))
    assert [r["index"] for r in body["results"]] == [i for i, _ in expected]
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i, _ in expected]
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= p <= 1.0 for p in scores)
    assert scores[-1] == 0.0 and body["results"][-1]["index"] == len(DOCS) - 1  # the empty one
    assert all("raw_score" not in r for r in body["results"])
    assert body["usage"]["documents"] == len(DOCS) and body["usage"]["total_tokens"] > 100


def test_rerank_also_answers_text_embeddings_inference_requests(live, core):
    url, _ = live
    answer = httpx.post(url + "/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True,
                                               "raw_scores": True, "truncate": True},
                        headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    expected = in_process_order(core, len(DOCS))
    assert [r["index"] for r in answer.json()] == [i for i, _ in expected]
    assert [r["text"] for r in answer.json()] == [DOCS[i] for i, _ in expected]
    bare = httpx.post(url + "/rerank", json={"query": QUERY, "texts": DOCS[:2]}, headers=AUTH,
                      timeout=60).json()
    assert sorted(r["index"] for r in bare) == [0, 1] and all("text" not in r for r in bare)
    [found] = core.rerank_reading([QUERY], [DOCS])
    assert [r["score"] for r in answer.json()] == pytest.approx(
        [max(f, -1e30) for f in found.fused], rel=1e-5)  # raw_scores: the fused score
    assert [r["score"] for r in bare] == pytest.approx(
        [p for _, p in core.rerank(QUERY, DOCS[:2])], rel=1e-5)  # else the probability
    wrong = httpx.post(url + "/rerank", json={"query": QUERY, "texts": "one"}, headers=AUTH)
    assert wrong.status_code == 422 and "texts" in wrong.text
    assert httpx.post(url + "/v1/rerank", json={"query": QUERY, "texts": DOCS},
                      headers=AUTH).status_code == 422  # TEI's schema is /rerank's alone


def test_a_score_threshold_keeps_the_documents_at_or_above_it(live, core):
    url, _ = live
    expected = in_process_order(core, len(DOCS))
    threshold = expected[2][1]
    body = rerank(url, {"score_threshold": threshold}).json()
    assert [r["index"] for r in body["results"]] == [i for i, p in expected if p >= threshold]
    assert len(body["results"]) >= 3
    assert [r["index"] for r in rerank(url, {"score_threshold": 1.0}).json()["results"]] == []
    refused = rerank(url, {"score_threshold": 1.5})
    assert refused.status_code == 422 and "score_threshold" in refused.text
    tei = httpx.post(url + "/rerank", json={"query": QUERY, "texts": DOCS,
                                            "score_threshold": threshold},
                     headers=AUTH, timeout=60).json()
    assert [r["index"] for r in tei] == [r["index"] for r in body["results"]]


def test_top_n_beyond_the_documents_returns_them_all_and_no_documents_when_asked_not_to(live):
    url, _ = live
    body = rerank(url, {"top_n": 7, "return_documents": False}).json()
    assert len(body["results"]) == len(DOCS)
    assert all("document" not in r for r in body["results"])
    assert rerank(url, {"documents": []}).json()["results"] == []


def test_models_health_and_the_key(live):
    url, _ = live
    assert httpx.get(url + "/v1/models", headers=AUTH).json()["data"][0]["id"] == MODEL
    assert health(url)["status"] == "ok"  # open: load balancers probe it without a key


# --- faults: each answered with a message, and the next request succeeds -------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": KEY}])
def test_a_missing_or_wrong_key_is_401(live, headers):
    url, _ = live
    answer = rerank(url, {}, headers=headers)
    assert answer.status_code == 401 and "API key" in answer.json()["detail"]
    assert answer.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/v1/models", headers=headers).status_code == 401
    assert_serving(url)


@pytest.mark.parametrize(("payload", "status", "names"), [
    ({"documents": DOCS[:1] * 9}, 413, "max_documents = 8"),
    ({"documents": ["x" * 3001]}, 413, "max_document_chars = 3000"),
    ({"query": "why " * 60}, 413, "max_query_chars = 200"),
    ({"top_n": 9}, 422, "max_documents = 8"),
    ({"query": "   "}, 422, "query"),
    ({"model": "rerank-english-v3.0"}, 404, "'invar-reranker'"),
])
def test_a_request_over_a_limit_names_the_limit(live, payload, status, names):
    url, _ = live
    answer = rerank(url, payload)
    assert answer.status_code == status
    assert names in answer.json()["detail"]
    assert_serving(url)


@pytest.mark.parametrize(("payload", "field"), [
    ({"query": 5}, "query"), ({"documents": "one text"}, "documents"),
    ({"documents": [{"title": "no text"}]}, "text"), ({"top_n": -1}, "top_n"),
    ({"top_n": "three"}, "top_n"),
])
def test_a_wrong_type_is_422_naming_the_field(live, payload, field):
    url, _ = live
    answer = rerank(url, payload)
    assert answer.status_code == 422
    assert field in [str(part) for error in answer.json()["detail"] for part in error["loc"]]
    assert_serving(url)


def test_malformed_json_and_an_oversized_body_are_refused(live):
    url, _ = live
    broken = httpx.post(url + "/v1/rerank", content=b'{"query": "x", "documents": [',
                        headers={**AUTH, "Content-Type": "application/json"})
    assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid"
    huge = httpx.post(url + "/v1/rerank", content=b"x" * 100_001,
                      headers={**AUTH, "Content-Type": "application/json"})
    assert huge.status_code == 413 and "max_body_bytes = 100000" in huge.json()["detail"]
    assert_serving(url)


def test_a_scorer_exception_fails_its_batch_with_500_and_the_server_keeps_serving(live):
    url, _ = live
    answer = rerank(url, {"query": "explode"})
    assert answer.status_code == 500
    assert answer.json()["detail"] == "scoring failed: RuntimeError: the scorer broke"
    assert health(url)["failed"] >= 1
    assert_serving(url)


def test_a_client_that_disconnects_leaves_no_pairs_in_the_queue(live):
    url, hooked = live
    withdrawn = health(url)["withdrawn"]
    hooked.gate.clear()  # the scorer holds the next batch
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(rerank, url, {"query": "held"})
        wait_until(lambda: hooked.batches[-1:] == [["held"]], "the scorer reads 'held'")
        with pytest.raises(httpx.ReadTimeout):  # queued behind it, then the client leaves
            rerank(url, {"query": "gone"}, timeout=httpx.Timeout(5, read=0.5))
        # the event loop answers while the scorer works, and the queue is empty again
        wait_until(lambda: health(url)["withdrawn"] == withdrawn + 1, "the pairs leave")
        assert health(url)["queued_pairs"] == 0
        hooked.gate.set()
        assert held.result().status_code == 200
    assert all("gone" not in batch for batch in hooked.batches)
    assert_serving(url)


def test_concurrent_requests_are_scored_in_one_batch_with_the_in_process_results(live, core):
    url, hooked = live
    hooked.gate.clear()
    queries = ["who found penicillin", "capital of France", "highest mountain"]
    with ThreadPoolExecutor(4) as pool:
        held = pool.submit(rerank, url, {"query": "held"})
        wait_until(lambda: hooked.batches[-1:] == [["held"]], "the scorer reads 'held'")
        answers = [pool.submit(rerank, url, {"query": q, "top_n": 3}) for q in queries]
        wait_until(lambda: health(url)["queued_pairs"] == 3 * len(DOCS), "all three wait")
        hooked.gate.set()
        assert held.result().status_code == 200
        bodies = [a.result().json() for a in answers]
    assert sorted(hooked.batches[-1]) == sorted(queries)  # one scorer call for the three
    for query, body in zip(queries, bodies):
        expected = core.rerank(query, DOCS, 3)
        assert [r["index"] for r in body["results"]] == [i for i, _ in expected]
        assert [r["relevance_score"] for r in body["results"]] == \
            pytest.approx([s for _, s in expected], rel=1e-4, abs=1e-5)


# --- the batcher alone ---------------------------------------------------------------------------

def echo(queries, documents, top_n):
    return [(q, len(d)) for q, d in zip(queries, documents)]


def test_batches_hold_whole_requests_up_to_max_batch_pairs_and_one_turns_batching_off():
    async def burst(batcher: RequestBatcher, sizes: list[int]) -> list:
        return await asyncio.gather(*(batcher.submit(f"q{i}", ["d"] * n, None)
                                      for i, n in enumerate(sizes)))

    calls = []

    def recorded(queries, documents, top_n):
        calls.append([len(d) for d in documents])
        return echo(queries, documents, top_n)

    batcher = RequestBatcher(recorded, max_batch_pairs=5, max_wait_ms=200)
    assert asyncio.run(burst(batcher, [2, 3, 4, 9])) == [("q0", 2), ("q1", 3), ("q2", 4),
                                                         ("q3", 9)]
    assert calls == [[2, 3], [4], [9]]  # a larger request goes alone
    batcher.close()
    calls.clear()
    alone = RequestBatcher(recorded, max_batch_pairs=1, max_wait_ms=200)
    asyncio.run(burst(alone, [1, 1, 1]))
    assert calls == [[1], [1], [1]]
    alone.close()


def test_batcher_settings_out_of_range_fail_with_the_value():
    for kwargs, message in (({"max_batch_pairs": 0}, "max_batch_pairs must be >= 1, got 0"),
                            ({"max_wait_ms": -1}, "max_wait_ms must be >= 0, got -1"),
                            ({"max_queued_pairs": 0}, "max_queued_pairs must be >= 1, got 0")):
        with pytest.raises(ValueError, match=message):
            RequestBatcher(echo, **kwargs)
    with pytest.raises(ValueError, match="max_documents must be a positive integer, got 0"):
        ServiceSettings(max_documents=0)
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0, got -1"):
        ServiceSettings(max_wait_ms=-1)  # checked before any model loads


def test_the_passage_cache_serves_a_repeated_request_from_cached_states(tiny_rag_system, core):
    from invar_rag_integrations.invar.artifacts import load_reranker

    reranker = load_reranker(tiny_rag_system, precision="float32")[0]
    with running(create_app(reranker, ServiceSettings(passage_cache_mb=16))) as url:
        answers = [rerank(url, {"top_n": 3}, headers={}).json()["results"] for _ in range(2)]
        cache = health(url)["passage_cache"]
    assert answers[0] == answers[1]
    assert [(r["index"], pytest.approx(r["relevance_score"], abs=1e-4)) for r in answers[0]] \
        == in_process_order(core, 3)
    assert cache["hits"] >= cache["misses"] > 0 and 0 < cache["bytes"] <= 16 * 2**20
    with pytest.raises(ValueError, match="passage_cache_mb must be >= 0"):
        ServiceSettings(passage_cache_mb=-1)
    bf16 = load_reranker(tiny_rag_system, precision="bfloat16")[0]
    with pytest.raises(ValueError, match="float32"):
        create_app(bf16, ServiceSettings(passage_cache_mb=16))


def test_early_stop_reads_the_first_documents_and_returns_the_rest_unread_in_order(core):
    from invar_rag_integrations.rerank_service.handler import UNSCORED_IN_JSON

    documents = DOCS[:5]
    with running(create_app(core, ServiceSettings(read_first=2, stop_margin=0.0))) as url:
        answer = rerank(url, {"documents": documents}, headers={}).json()
        assert_serving(url)
        raw = rerank(url, {"documents": documents, "raw_scores": True}, headers={}).json()
    results = answer["results"]
    unread = [r for r in raw["results"] if r["raw_score"] == UNSCORED_IN_JSON]
    assert sorted(r["index"] for r in unread) == [2, 3, 4]  # read: the first two
    assert all(0.0 < r["relevance_score"] < 1.0 for r in results)  # unread ones too
    assert [r["relevance_score"] for r in results] == [r["relevance_score"] for r in raw["results"]]
    assert answer["usage"]["total_tokens"] == core.scorer.tokens_read(QUERY, documents[:2]) + \
        core.scorer.prior([QUERY])[1][0]  # the question once with no passage


def test_a_full_queue_refuses_with_503_semantics_and_a_closed_batcher_takes_nothing():
    from invar_rag_integrations.rerank_service.batcher import BatcherClosed, QueueFull

    gate = threading.Event()

    def slow(queries, documents, top_n):
        gate.wait(10)
        return echo(queries, documents, top_n)

    batcher = RequestBatcher(slow, max_batch_pairs=1, max_wait_ms=0, max_queued_pairs=3)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit("a", ["d"], None))
        while batcher.scoring_pairs != 1:  # the worker reads it
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit("b", ["d"] * 3, None))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="max_queued_pairs = 3"):
            await batcher.submit("c", ["d"], None)
        gate.set()
        return await first, await second

    assert asyncio.run(scenario()) == (("a", 1), ("b", 3))
    batcher.close()
    with pytest.raises(BatcherClosed):
        asyncio.run(batcher.submit("late", ["d"], None))


# --- the command ---------------------------------------------------------------------------------

def test_rerank_settings_without_rerank_and_generation_flags_with_it_are_refused(tiny_rag_system):
    from invar_rag_integrations.cli import main

    with pytest.raises(SystemExit, match="--max-documents: settings of the rerank service"):
        main(["serve", str(tiny_rag_system), "--max-documents", "3"])
    with pytest.raises(SystemExit, match="--merge is a setting of the generation server"):
        main(["serve", str(tiny_rag_system), "--rerank", "--merge"])
    with pytest.raises(SystemExit, match="--scorer-engine: a setting of the rerank service"):
        main(["serve", str(tiny_rag_system), "--scorer-engine", "vllm"])
    with pytest.raises(SystemExit, match="need --scorer-engine vllm"):
        main(["serve", str(tiny_rag_system), "--rerank", "--", "--max-model-len", "2048"])
    with pytest.raises(SystemExit, match="vLLM's prefix cache keeps them"):
        main(["serve", str(tiny_rag_system), "--rerank", "--scorer-engine", "vllm",
              "--passage-cache-mb", "100"])
    with socket.socket() as taken:  # refused before the model loads
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit, match="already in use; choose another one"):
            main(["serve", str(tiny_rag_system), "--rerank", "--port",
                  str(taken.getsockname()[1])])


def test_the_served_command_drains_a_request_in_flight_on_sigterm_and_exits(tiny_rag_system,
                                                                             tmp_path):
    settings = ServiceSettings(model_name=MODEL, max_documents=400, api_key=KEY)
    server = RerankServer(tiny_rag_system, port=free_port(), settings=settings,
                          log=tmp_path / "server.log").start()
    try:
        url = server.root_url
        assert KEY not in " ".join(server.process.args)  # the key travels in the environment
        assert rerank(url, {}, headers={}).status_code == 401
        assert_serving(url)
        many = [f"{DOCS[i % 5]} {' '.join(['filler'] * (i % 50))} {i}" for i in range(400)]
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(rerank, url, {"documents": many, "top_n": 5})
            wait_until(lambda: health(url)["scoring_pairs"] == 400, "the scorer reads it")
            server.process.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        assert answer.status_code == 200 and len(answer.json()["results"]) == 5
        assert server.process.wait(60) == 0
        log = (tmp_path / "server.log").read_text()
        assert "stopped after answering 2 requests" in log  # 401s are not scored
    finally:
        server.stop()


@pytest.mark.parametrize(("path", "payload", "headers", "status"), [
    ("/v1/rerank", {}, {}, 401),
    ("/v2/rerank", {"documents": DOCS[:1] * 9}, AUTH, 413),
    ("/v1/rerank", {"query": ""}, AUTH, 422),
    ("/v1/rerank", {"query": "   "}, AUTH, 422),
    ("/rerank", {"top_n": 9}, AUTH, 422),
    ("/v1/rerank", {"model": "rerank-english-v3.0"}, AUTH, 404),
])
def test_the_openapi_document_describes_what_each_route_answers(live, path, payload, headers,
                                                                 status):
    """Each bad input gets a status the route documents, in the body schema documented for it;
    an empty query is invalid by the schema (minLength) as the service treats it."""
    from jsonschema import validate

    url, _ = live
    spec = httpx.get(url + "/openapi.json").json()
    operation = spec["paths"][path]["post"]
    request_schema = spec["components"]["schemas"]["RerankRequest"]
    assert request_schema["properties"]["query"]["minLength"] == 1
    answer = rerank(url, payload, path, headers=headers)
    assert answer.status_code == status
    documented = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    validate(answer.json(), {**documented, "components": spec["components"]})


def test_each_request_is_logged_once(live, caplog):
    url, _ = live
    with caplog.at_level("INFO", logger="invar_rag_integrations.rerank_service"):
        assert rerank(url, {}).status_code == 200
        assert rerank(url, {"query": "   "}).status_code == 422
    lines = [r.getMessage() for r in caplog.records
             if r.name == "invar_rag_integrations.rerank_service"]
    assert len(lines) == 2
    assert lines[0].startswith("/v1/rerank 200 documents=") and "pairs_read=" in lines[0]
    assert lines[1].startswith("/v1/rerank 422 ") and "latency_ms=" in lines[1]
