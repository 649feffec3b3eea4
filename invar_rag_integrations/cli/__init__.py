"""The ``invar-rag`` command."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence

from ..evaluation.chunking import CHUNKING_NAMES, PASSAGES
from ..evaluation.datasets import ODQA_DATASETS, RETRIEVAL_DATASETS, SPLITS
from ..evaluation.qa_eval import QA_DATASETS, QA_SYSTEMS
from ..generation import GENERATION_BACKENDS
from ..invar.settings import PRECISIONS, InvarSettings
from ..rerank_service.settings import API_KEY_VARIABLE, SCORER_ENGINES, add_settings_flags
from ..retrieval.stage1 import STAGE1
from ..synthetic import ROUND_TRIPS
from ..training.catalog import RETRIEVER_NAMES
from .fitting import add_fitting_commands, positive_int


def _eval_retrieval(args: argparse.Namespace) -> None:
    from ..evaluation import evaluate_retrieval, odqa_questions
    from ..evaluation.chunking import chunked_corpus
    from ..evaluation.results import pivot_table, write_results
    from ..invar import TwoStageRetriever
    from ..retrieval import CrossEncoderRetriever
    from ..training.catalog import make_retriever

    if "triviaqa_dev" in args.datasets:
        raise SystemExit("triviaqa_dev has no covering passages in the corpus: use it for answer "
                         "EM only, not for Acc@k")
    questions = odqa_questions(args.split, args.datasets, args.limit, args.data_dir)
    passages = chunked_corpus(args.chunking, args.data_dir)  # before any model loads
    retriever = make_retriever(args.retriever, args.data_dir)
    ks = list(args.k)
    if isinstance(retriever, (TwoStageRetriever, CrossEncoderRetriever)):
        holder = retriever.settings if isinstance(retriever, TwoStageRetriever) else retriever
        holder.candidates = args.candidates or holder.candidates
        depth = holder.candidates
        if any(k > depth for k in ks):
            print(f"the two-stage retriever reads {depth} candidates per query: Acc@k for "
                  f"k > {depth} is left out (--candidates sets the depth)", file=sys.stderr)
            ks = [k for k in ks if k <= depth] or [depth]
    by_id = {p.id: p for p in passages}
    if retriever.passage_ids:  # a saved index: it must cover this corpus
        unknown = [pid for pid in retriever.passage_ids if pid not in by_id]
        if unknown:
            raise SystemExit(f"{args.retriever}: the saved index holds {len(unknown)} passage ids "
                             f"that are not in the corpus (e.g. {unknown[0]!r})")
    else:
        started = time.perf_counter()
        retriever.index(passages)
        print(f"indexed {len(passages)} passages in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
    rows = evaluate_retrieval(retriever, questions, by_id, args.split, ks)
    for row in rows:
        row["chunking"] = args.chunking
    print(pivot_table(rows, [f"acc@{k}" for k in ks]))
    chunking = "" if args.chunking == PASSAGES else f"-{args.chunking}"
    output = args.output or f"eval-retrieval-{retriever.name}-{args.split}{chunking}.json"
    print(f"wrote {write_results(output, rows)}", file=sys.stderr)


def _train(args: argparse.Namespace) -> None:
    import importlib

    try:
        driver = importlib.import_module(f"invar_rag_integrations.training.{args.driver}")
    except ImportError as err:
        raise ImportError(f"training needs the 'train' extra ({err}): "
                          "pip install 'invar-rag-integrations[train]'") from None
    driver.main([args.config, *args.overrides])


def _eval_qa(args: argparse.Namespace) -> None:
    from ..evaluation import odqa_corpus, odqa_questions
    from ..evaluation.qa_eval import compare_systems, sample_per_dataset
    from ..evaluation.results import pivot_table, write_results

    questions = sample_per_dataset(odqa_questions(args.split, args.datasets, data=args.data_dir),
                                   args.sample, args.seed)
    rows = compare_systems(args.system, questions, odqa_corpus(args.data_dir), args.split,
                           args.systems, args.batch_size, backend=args.backend)
    print(pivot_table([r for r in rows if r["dataset"] != "all"], ["em", "f1"]))
    print(pivot_table([r for r in rows if r["dataset"] == "all"],
                      ["tokens_per_s", "s_per_question"]))
    output = args.output or f"eval-qa-{args.split}.json"
    print(f"wrote {write_results(output, rows)}", file=sys.stderr)


def _index(args: argparse.Namespace) -> None:
    from ..data import load_passages
    from ..invar import TwoStageRetriever
    from ..invar.two_stage import INDEX_DIR

    passages = load_passages(args.corpus)  # validated before any model loads
    retriever = TwoStageRetriever.from_pretrained(args.retriever, index=None)
    started = time.perf_counter()
    retriever.index(passages)
    seconds = time.perf_counter() - started
    output = retriever.save(args.output or f"{args.retriever}/{INDEX_DIR}", passages)
    print(f"indexed {len(passages)} passages in {seconds:.1f} s "
          f"({len(passages) / seconds:.1f} passages/s); saved to {output}", file=sys.stderr)


def _init_system(args: argparse.Namespace) -> None:
    from ..invar import InvarSettings, TwoStageRetriever
    from ..invar.artifacts import save_retriever

    defaults = InvarSettings()
    settings = InvarSettings(stage1=args.stage1, candidates=args.candidates,
                             bm25_weight=defaults.bm25_weight if args.stage1 == "rrf" else 0.0,
                             read_first=args.read_first, stop_margin=args.stop_margin,
                             chat_template=args.chat_template)
    retriever = TwoStageRetriever.zero_shot(args.base_model, args.coarse_encoder, settings,
                                         show_progress=False)
    command = ["invar-rag", "init-system", args.output, "--base-model", args.base_model,
               "--coarse-encoder", args.coarse_encoder, "--stage1", args.stage1,
               "--candidates", str(args.candidates), "--read-first", str(settings.read_first),
               "--stop-margin", str(settings.stop_margin)]
    if args.chat_template:
        command += ["--chat-template", shlex.quote(args.chat_template)]
    path = save_retriever(retriever.reranker, args.output, {"command": " ".join(command)})
    print(f"wrote the zero-shot retriever of {args.base_model!r} to {path} (other entries "
          f"kept); next: invar-rag index --retriever {path} --corpus FILE", file=sys.stderr)


def _demo(args: argparse.Namespace) -> None:
    from ..demo import SHIPPED_SYSTEM
    from ..demo.run import DemoSettings, run_demo

    run_demo(DemoSettings(args.system or SHIPPED_SYSTEM, args.backend))


def _make_questions(args: argparse.Namespace) -> None:
    import json

    from ..data import load_passages
    from ..generation import HFGenerator
    from ..invar.precision import resolve_precision
    from ..models import load_base_lm
    from ..synthetic import SyntheticSettings, make_questions

    passages = load_passages(args.corpus)  # validated before any model loads
    settings = SyntheticSettings(passages=args.passages, seed=args.seed,
                                 round_trip=args.round_trip,
                                 round_trip_depth=args.round_trip_depth,
                                 batch_size=args.batch_size)
    started = time.perf_counter()
    lm, tokenizer = load_base_lm(args.base_model)
    lm = lm.to(resolve_precision(args.precision, lm.device))
    counts = make_questions(passages, args.output, HFGenerator(lm, tokenizer), settings)
    seconds = time.perf_counter() - started
    print(json.dumps(counts))
    print(f"wrote {counts['questions']} questions from {counts['passages']} passages to "
          f"{args.output}/odqa in {seconds:.0f} s", file=sys.stderr)


def _serve(args: argparse.Namespace) -> None:
    args.api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    if args.rerank:
        from ..rerank_service.server import DEFAULT_RERANK_PORT, serve_rerank
        from ..rerank_service.settings import settings_from_args

        if args.merge:
            raise ValueError("--merge is a setting of the generation server, not of --rerank")
        serve_rerank(args.system, args.host, args.port or DEFAULT_RERANK_PORT,
                     settings_from_args(args), args.precision,
                     scorer_engine=args.scorer_engine or "hf", engine_args=args.engine_args)
        return
    if args.scorer_engine:
        raise ValueError("--scorer-engine: a setting of the rerank service; add --rerank")
    from ..rerank_service.settings import given_settings
    from ..serving import DEFAULT_PORT, serve

    rerank_only = [f"--{name.replace('_', '-')}" for name in given_settings(args)
                   if name != "api_key"]
    if rerank_only:
        raise ValueError(f"{', '.join(rerank_only)}: settings of the rerank service; add --rerank")
    serve(args.system, args.host, args.port or DEFAULT_PORT, args.api_key, args.engine_args,
          args.merge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invar-rag", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ev = commands.add_parser("eval-retrieval", help="Acc@k of a retriever on the ODQA questions")
    ev.add_argument("--retriever", required=True,
                    help=f"{', '.join(RETRIEVER_NAMES)}, a trained system directory or the "
                         "folder of a saved retriever")
    ev.add_argument("--candidates", type=positive_int,
                    help="two-stage retrievers: stage-1 candidates the scorer reads per query")
    ev.add_argument("--split", choices=SPLITS, default="dev")
    ev.add_argument("--chunking", choices=CHUNKING_NAMES, default=PASSAGES,
                    help="the corpus as 100-word passages (default), or its articles cut by "
                         "LlamaIndex's SentenceSplitter (llama-256/512/1024 tokens) or "
                         "LangChain's RecursiveCharacterTextSplitter (lc-1000/4000 characters)")
    ev.add_argument("--datasets", nargs="+", default=list(RETRIEVAL_DATASETS),
                    help=f"{', '.join(ODQA_DATASETS)}, or a dataset of --data-dir (e.g. "
                         "synthetic, from make-questions)")
    ev.add_argument("--limit", type=positive_int, help="first N questions of each dataset")
    ev.add_argument("--k", type=positive_int, nargs="+", default=[1, 5, 20])
    ev.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                       "../shared/data)")
    ev.add_argument("--output", help="results JSON (default: eval-retrieval-NAME-SPLIT.json)")
    ev.set_defaults(func=_eval_retrieval)

    for stage in ("retriever", "generator"):
        train = commands.add_parser(
            f"train-{stage}", help=f"train the {stage} adapter (training/train_{stage}.py)")
        train.add_argument("config", help=f"JSON config, e.g. training/configs/"
                                          f"{stage}_smollm2_cpu.json")
        train.add_argument("overrides", nargs=argparse.REMAINDER,
                           help="--flag value pairs that override the config")
        train.set_defaults(func=_train, driver=f"train_{stage}")

    qa = commands.add_parser("eval-qa", help="EM/F1 of a trained system beside its baselines")
    qa.add_argument("--system", required=True, help="trained system directory (with generator)")
    qa.add_argument("--systems", nargs="+", choices=QA_SYSTEMS, default=list(QA_SYSTEMS))
    qa.add_argument("--split", choices=SPLITS, default="val")
    qa.add_argument("--datasets", nargs="+", default=list(QA_DATASETS),
                    help=f"{', '.join(ODQA_DATASETS)}, or a dataset of --data-dir")
    qa.add_argument("--sample", type=positive_int,
                    help="a fixed seeded sample of N questions per dataset (default: all)")
    qa.add_argument("--seed", type=int, default=0)
    qa.add_argument("--batch-size", type=positive_int, default=8)
    qa.add_argument("--backend", choices=GENERATION_BACKENDS, default="hf",
                    help="generate with HF + peft (default) or one vLLM engine for all systems "
                         "(vllm-merged: the invar-rag and generator+minilm rows only)")
    qa.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                       "../shared/data)")
    qa.add_argument("--output", help="results JSON (default: eval-qa-SPLIT.json)")
    qa.set_defaults(func=_eval_qa)

    index = commands.add_parser("index", help="index a corpus with a trained Invar retriever")
    index.add_argument("--retriever", required=True, help="trained system directory")
    index.add_argument("--corpus", required=True,
                       help="JSON-lines passages {id, text, title}")
    index.add_argument("--output", help="index folder (default: <retriever>/index)")
    index.set_defaults(func=_index)

    add_fitting_commands(commands)

    init = commands.add_parser(
        "init-system", help="write a system directory holding the zero-shot two-stage retriever "
                            "(no training; a generator can be trained on it)")
    init.add_argument("output", help="system directory (created; a generator entry is kept)")
    init.add_argument("--base-model", default="smollm2",
                      help="scorer LM: smollm2, gemma3-270m or a local model folder")
    init.add_argument("--coarse-encoder", default="minilm",
                      help="stage-1 encoder: minilm or a sentence-transformers folder")
    init.add_argument("--stage1", choices=STAGE1, default=InvarSettings.stage1,
                      help="candidate proposer: rrf (BM25 + MiniLM) or minilm")
    init.add_argument("--candidates", type=positive_int, default=InvarSettings.candidates,
                      help="stage-1 candidates the scorer reads per query")
    init.add_argument("--read-first", type=positive_int,
                      help="candidates the scorer reads before it may stop (default: "
                           "min(2, --candidates); --candidates reads them all)")
    init.add_argument("--stop-margin", type=float, default=InvarSettings.stop_margin,
                      help="stop reading once the leader's fused score beats the runner-up's "
                           "by this much (inf: never stop)")
    init.add_argument("--chat-template",
                      help="read the prompt in the base model's chat form: model (its "
                           "tokenizer's template, stored rendered) or a form with {message} and "
                           "{answer}; default: the plain prompt")
    init.set_defaults(func=_init_system)

    questions = commands.add_parser(
        "make-questions", help="synthetic question-answer pairs from a corpus (ODQA layout, "
                               "resumable): train on a corpus that has no questions")
    questions.add_argument("--corpus", required=True, help="JSON-lines passages {id, text, title}")
    questions.add_argument("--output", required=True,
                           help="folder for odqa/corpus.jsonl and odqa/dev_questions.jsonl")
    questions.add_argument("--passages", type=positive_int, default=200,
                           help="passages sampled (seeded)")
    questions.add_argument("--seed", type=int, default=0)
    questions.add_argument("--base-model", default="smollm2",
                           help="the question writer: smollm2, gemma3-270m or a model folder")
    questions.add_argument("--round-trip", choices=ROUND_TRIPS, default="retrieval",
                           help="retrieval: keep a pair when BM25 ranks its passage in the top "
                                "--round-trip-depth for the question; answer: when the LM "
                                "answers it back (strict for a small LM); none")
    questions.add_argument("--round-trip-depth", type=positive_int, default=5)
    questions.add_argument("--batch-size", type=positive_int, default=8)
    questions.add_argument("--precision", choices=PRECISIONS, default="auto",
                           help="the writer's weights: auto = bfloat16 where the CPU multiplies "
                                "it natively (AMX) or on a GPU, else float32")
    questions.set_defaults(func=_make_questions)

    serve = commands.add_parser(
        "serve", help="serve a system: vLLM's OpenAI-compatible server for its base model and "
                      "adapters (needs: make install-vllm), or with --rerank the Cohere / Jina "
                      "rerank API over its Invar reranker",
        epilog="vLLM flags go after --, e.g. invar-rag serve SYSTEM -- --max-model-len 2048 "
               "(also for --rerank --scorer-engine vllm). The two servers run side by side as "
               "two commands on two ports (defaults 8000 and 8001).")
    serve.add_argument("system", help="system directory (a generator for vLLM, a retriever for "
                                      "--rerank)")
    serve.add_argument("--rerank", action="store_true",
                       help="serve POST /v1/rerank, /v2/rerank and /rerank (Cohere and Jina "
                            "clients) instead of the generation server")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=positive_int,
                       help="default: 8000 (generation), 8001 (--rerank)")
    serve.add_argument("--merge", action="store_true",
                       help="serve the generator merged into a copy of the base model (on CPUs "
                            "far faster than the LoRA path; serves model 'generator' alone)")
    serve.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="--rerank: the scorer's weights (auto = bfloat16 where the CPU "
                            "multiplies it natively or on a GPU, else float32)")
    serve.add_argument("--scorer-engine", choices=SCORER_ENGINES,
                       help="--rerank: read the pairs with the HF model in torch (hf, default) "
                            "or through a vLLM engine's prompt log-probabilities (vllm: for a "
                            "GPU; needs make install-vllm; vLLM flags go after --)")
    add_settings_flags(serve.add_argument_group("rerank service (--rerank; --api-key also "
                                                "for the generation server)"))
    serve.set_defaults(func=_serve, engine_args=[])

    demo = commands.add_parser("demo", help="answer the demo questions with sources (main job)")
    demo.add_argument("--system", help="trained system directory (default: the small system "
                                       "the package ships)")
    demo.add_argument("--backend", choices=GENERATION_BACKENDS, default="hf",
                      help="generate with HF + peft (default) or a vLLM engine")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # what follows -- goes to the vLLM server
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if extra:
        args.engine_args = extra
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ImportError, OSError) as err:
        raise SystemExit(f"invar-rag {args.command}: error: {err}") from None

