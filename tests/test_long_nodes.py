"""Long nodes as the frameworks cut them (LlamaIndex ``SentenceSplitter``, LangChain
``RecursiveCharacterTextSplitter``), read whole by the real scorer: a node whose answer is in
its last window ranks first through every wrapper. Runs on the embedded models (CI)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.model

QUESTION = "Who designed the lighthouse of Varnholm?"
ANSWER = "The lighthouse of Varnholm was designed by the engineer Ottilie Brand in 1887."
FARMING = ["The valley farms grow barley, oats and potatoes on terraced fields.",
           "Each spring the farmers repair the stone walls that keep the sheep in.",
           "Markets in the old square sell cheese, wool and smoked fish every Saturday.",
           "The river floods the lower meadows most winters, leaving rich soil behind.",
           "Cooperatives share tractors and a grain store near the railway station.",
           "Young people often leave for the cities, and the schools have merged.",
           "Tourists come in summer to walk the ridge paths and watch the birds."]
LIGHTHOUSES = ["Lighthouses guide ships along dangerous coasts with a rotating beam.",
               "Early lighthouses burned wood or coal in open fires on towers.",
               "Fresnel lenses made the light visible for many nautical miles.",
               "Keepers lived in small cottages beside the tower with their families.",
               "Most lighthouses are automated today and run by remote monitoring.",
               "Their towers are painted in bands so sailors can tell them apart by day.",
               "Fog signals and radio beacons were added in the twentieth century."]


def _article(sentences: list[str], paragraphs: int, last: str = "") -> str:
    body = [" ".join(sentences[(i + j) % len(sentences)] for j in range(5))
            for i in range(paragraphs)]
    return "\n\n".join(body + ([last] if last else []))


ARTICLES = {  # the answer ends a long article about something else; another starts on topic
    "varnholm": ("Varnholm", _article(FARMING, 9, ANSWER)),
    "lights": ("Lighthouses", _article(LIGHTHOUSES, 9)),
    "valley": ("Valley life", _article(FARMING[::-1], 9)),
}


@pytest.fixture(scope="module")
def core():
    from invar_rag_integrations.invar import TwoStageRetriever

    return TwoStageRetriever.zero_shot(show_progress=False)


def _answer_is_past_the_first_window(core, text: str) -> None:
    [windows], _ = core.scorer.tokens.windows(QUESTION, [text])
    node = core.scorer.tokens.node(text)
    assert len(node.body) > 4 * core.settings.max_passage_tokens  # a long node
    first = core.scorer.tokenizer.decode(node.windows(core.settings.max_passage_tokens,
                                                      core.settings.stride)[0])
    assert "Ottilie" not in first and "Ottilie" in core.scorer.tokenizer.decode(windows[-1])


def test_llama_index_nodes_of_the_default_splitter_are_read_whole(core) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.schema import NodeWithScore, QueryBundle

    from invar_rag_integrations import llama_index as li

    documents = [Document(text=text, metadata={"title": title}, id_=key)
                 for key, (title, text) in ARTICLES.items()]
    nodes = SentenceSplitter(chunk_size=1024).get_nodes_from_documents(documents)
    assert len(nodes) == 3  # one 1024-token node per article
    answer_node = next(n for n in nodes if ANSWER in n.get_content())
    _answer_is_past_the_first_window(core, answer_node.get_content())

    reranker = li.InvarReranker(core, top_n=1)
    [best] = reranker.postprocess_nodes([NodeWithScore(node=n, score=0.0) for n in nodes],
                                        QueryBundle(QUESTION))
    assert best.node.node_id == answer_node.node_id
    [retrieved] = li.InvarRetriever(core, nodes=nodes, similarity_top_k=1).retrieve(QUESTION)
    assert retrieved.node.node_id == answer_node.node_id


def test_langchain_documents_of_the_default_splitter_are_read_whole(core) -> None:
    pytest.importorskip("langchain_text_splitters")
    from langchain_core.documents import Document
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from invar_rag_integrations import langchain as lc

    documents = RecursiveCharacterTextSplitter(chunk_size=4000).split_documents(
        [Document(page_content=text, metadata={"title": title}, id=key)
         for key, (title, text) in ARTICLES.items()])
    answer = next(d for d in documents if ANSWER in d.page_content)
    _answer_is_past_the_first_window(core, answer.page_content)
    for i, document in enumerate(documents):
        document.id = f"chunk-{i}"

    [best] = lc.InvarReranker(retriever=core, top_n=1).compress_documents(documents, QUESTION)
    assert best.id == answer.id
    retriever = lc.InvarRetriever.from_documents(documents, core, k=1)
    [found] = retriever.invoke(QUESTION)
    assert found.id == answer.id
