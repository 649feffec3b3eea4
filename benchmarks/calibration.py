"""Calibrated relevance: ``python -m benchmarks.calibration`` (part of ``make bench``).

For each chunking (``passages``; ``llama-1024``: the articles cut by LlamaIndex's
``SentenceSplitter`` at 1,024 tokens), the zero-shot two-stage retriever proposes its stage-1
candidates for every question of two splits: ``tune`` (the tuning slice of the nq /
popqa_longtail / squad training questions) and ``val`` (all val questions). The scorer reads
every candidate once (``r`` and the no-passage prior cached under ``calibration`` in the project
cache); the early stop is then replayed on those scores, so each val candidate is scored as the
retriever serves it, read or not. Two retriever settings share those readings: the embedded
zero-shot ones (``upr-zero-shot``) and the shipped demo system's fusion weights
(``demo-system``).

1. The zero-shot calibrators (``training/calibrate.py``) are fitted on the tune pairs of every
   chunking (cross-fitted errors there, 5 folds by question); ``--write-embedded`` stores them
   as the embedded calibration (``invar/zero_shot_calibration.json``). The demo system is
   measured with the calibration it ships; ``--write-embedded`` fits that one too, as ``make
   demo-system`` does (``invar-rag calibrate`` on the passages tune questions), from the
   readings here, and stores it in its manifest. ``*-own-chunking``: the zero-shot fit on one
   chunking's tune pairs alone (what ``invar-rag calibrate --chunking`` gives). Val questions:
   all on passages; ``--long-val-sample`` per dataset (seeded) on the other chunking.
2. Per dataset and chunking, over every stage-1 candidate of every val question (label: it holds
   an answer, ``has_answer``): ECE (10 equal-width bins), Brier score, AUROC and the reliability
   diagram of the probabilities the two-stage retriever serves, of the reranker's calibrators
   (``*-reranker``: no stage-1 terms), and of two baselines fitted on the same tune pairs:
   ``platt-fused`` (Platt scaling of the fused score, every candidate read) and
   ``cosine-calibrated`` (the stage-1 cosine under the same kind of calibrator).
3. Acc@1 over all val questions, each under the early stop: ranked by the fused score
   (``:rank-fused``, the order before calibration), by the shipped probability
   (``:rank-probability``) and by a richer read model that may re-rank
   (``:rank-rich-probability``: ``r``, the prior, cosine, BM25, length and stage-1 terms apart,
   fitted on the same chunking's tune pairs), beside MiniLM alone; paired wins and losses, and
   the pairs read per query.

Writes ``benchmarks/results/calibration.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict

import numpy as np

from benchmarks.run import DATASETS, ROOT, _row

CHUNKINGS = ("passages", "llama-1024")
SPLITS = ("tune", "val")
# a read model that may re-rank: the LM's likelihood, cosine, BM25, length and stage 1 apart
RICH_FEATURES = ("lm", "prior", "cosine", "bm25", "log_tokens", "stage1_rank", "stage1_score")
DEMO_SYSTEM = ROOT / "invar_rag_integrations" / "demo" / "system"
# what `make demo-system` runs; --write-embedded fits the same from this benchmark's readings
DEMO_COMMAND = ("invar-rag calibrate invar_rag_integrations/demo/system --split tune --chunking "
                "passages --datasets nq popqa_longtail squad (fitted by python -m "
                "benchmarks.calibration --write-embedded from its cached readings)")


def zero_shot_retriever():
    """The zero-shot two-stage retriever with the embedded settings, built without its
    calibration (this benchmark fits it)."""
    from invar_rag_integrations.invar import InvarScorer, InvarSettings, Stage2Reranker
    from invar_rag_integrations.invar.two_stage import TwoStageRetriever
    from invar_rag_integrations.models import load_base_lm, load_coarse_encoder

    lm, tokenizer = load_base_lm("smollm2")
    settings = InvarSettings()
    scorer = InvarScorer(lm, tokenizer, settings.scorer_settings())
    return TwoStageRetriever(Stage2Reranker(scorer, load_coarse_encoder("minilm"), settings),
                             "zero-shot", show_progress=False)


def read_all(scorer, texts: list[str], candidates: list, cache, name: str,
             batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(r [Q, C], prior [Q])`` of every candidate, from ``cache`` when read before."""
    identity = (scorer.lm.invar_source.identity, asdict(scorer.settings), texts,
                [[(p.id, p.text) for p in row] for row in candidates])
    key = hashlib.sha256(repr(identity).encode()).hexdigest()[:16]
    path = cache / f"{name}-{key}.npz"
    if path.is_file():
        found = np.load(path)
        return found["lm"], found["prior"]
    started, lm = time.perf_counter(), []
    for start in range(0, len(texts), batch):
        part = slice(start, start + batch)
        lm += scorer.score_batch(texts[part], candidates[part])
        print(f"{name}: read {min(start + batch, len(texts))}/{len(texts)} questions in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    prior = scorer.window_scores(texts, [[] for _ in texts])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, lm=np.stack(lm), prior=prior)
    return np.stack(lm), prior


class Chunking:
    """One chunking's zero-shot retriever (indexed), its questions per split and what the LM
    read of their candidates (``lm``, ``prior``)."""

    def __init__(self, chunking: str, data: str | None, val_sample: int | None = None):
        from invar_rag_integrations.evaluation import odqa_questions
        from invar_rag_integrations.evaluation.chunking import chunked_corpus
        from invar_rag_integrations.evaluation.qa_eval import sample_per_dataset
        from invar_rag_integrations.paths import cache_dir

        self.name = chunking
        corpus = chunked_corpus(chunking, data)
        self.retriever = zero_shot_retriever()
        started = time.perf_counter()
        self.retriever.index(corpus)
        print(f"{chunking}: indexed {len(corpus)} nodes in {time.perf_counter() - started:.0f} "
              "s", file=sys.stderr, flush=True)
        self.questions, self.read = {}, {}
        for split in SPLITS:
            self.questions[split] = odqa_questions(split, DATASETS, data=data)
            if split == "val" and val_sample:
                self.questions[split] = sample_per_dataset(self.questions[split], val_sample,
                                                           seed=0)
            texts = [q.question for q in self.questions[split]]
            candidates = [[self.retriever.passages[i] for i in r.ids]
                          for r in self.retriever.propose(texts).results]
            self.read[split] = read_all(self.retriever.scorer, texts, candidates,
                                        cache_dir() / "calibration", f"{chunking}-{split}")

    def pairs(self, split: str, settings) -> object:
        """``LabelledPairs`` of a split with ``settings``' fused scores (stage 1 called once over
        all the questions, as when they were read: the same candidates in the same order)."""
        from invar_rag_integrations.training.calibrate import read_candidates

        own, self.retriever.reranker.settings = self.retriever.reranker.settings, settings
        try:
            questions = self.questions[split]
            return read_candidates(self.retriever, questions, len(questions), *self.read[split])
        finally:
            self.retriever.reranker.settings = own


def replay(pairs, settings) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per question, the fused scores and the read mask under ``settings``' early stop."""
    from invar_rag_integrations.invar.early_stop import read_until_clear

    fused = [t["fused"] for t in pairs.tables]
    found = read_until_clear([len(f) for f in fused], settings.read_first, settings.stop_margin,
                             lambda picked, parts: [fused[i][p] for i, p in zip(picked, parts)])
    return fused, [np.isfinite(f) for f in found]


def served(calibration, path: str, pairs, read: list[np.ndarray]) -> list[np.ndarray]:
    """Each question's candidates' probabilities as served on ``path`` (the read model where
    read)."""
    tables = pairs.path_tables(path)
    return [calibration.probabilities(path, table, mask) for table, mask in zip(tables, read)]


def error_rows(system: str, chunking: str, pairs, probabilities) -> list[dict]:
    """ECE, Brier and AUROC per dataset (and over all) of per-question probabilities, and the
    reliability diagram over all (``reliability_<bin>_p`` / ``_relevant``, n = pairs)."""
    from invar_rag_integrations.evaluation.metrics import calibration_errors, reliability_bins

    rows = []
    for dataset in (*DATASETS, "all"):
        rows_of = [i for i, d in enumerate(pairs.datasets) if dataset in (d, "all")]
        p = np.concatenate([probabilities[i] for i in rows_of])
        y = np.concatenate([pairs.labels[i] for i in rows_of])
        for metric, value in calibration_errors(p, y).items():
            rows.append(_row(system, dataset, metric, value, len(p), "val"))
    for b, (mean, share, n) in enumerate(reliability_bins(p, y)):
        rows += [_row(system, "all", f"reliability_{b}_p", mean, n, "val"),
                 _row(system, "all", f"reliability_{b}_relevant", share, n, "val")]
    return [{**row, "chunking": chunking} for row in rows]


def single_feature(tune, val, values) -> list[np.ndarray]:
    """A logistic calibrator on one feature (``values(pairs) -> per-question arrays``),
    fitted on ``tune`` and applied to ``val``: the baselines' calibration."""
    from invar_rag_integrations.training.calibrate import fit_logistic

    x = np.concatenate(values(tune))[:, None]
    model = fit_logistic(x, np.concatenate(tune.labels), ("x",))
    return [model.probability({"x": v}) for v in values(val)]


def ranking_rows(name: str, chunking: str, pairs, settings, calibrations: dict,
                 minilm_hits: np.ndarray) -> list[dict]:
    """Acc@1 over all val questions under ``settings``' early stop: by the fused score (the
    order before calibration: read candidates by ``s``, unread ones in stage 1's order) and by
    each calibration's probability (``reranker.ranking``), with paired wins and losses against
    the fused order and MiniLM, and the pairs read per query."""
    from invar_rag_integrations.invar.reranker import ranking

    fused, read = replay(pairs, settings)
    n_questions = range(len(pairs.tables))
    hits = {"rank-fused": np.array([
        bool(pairs.labels[i][np.argsort(-np.where(read[i], fused[i], -np.inf), kind="stable")[0]])
        for i in n_questions])}
    for label, calibration in calibrations.items():
        probabilities = served(calibration, "retriever", pairs, read)
        hits[label] = np.array([bool(pairs.labels[i][ranking(probabilities[i], read[i])[0]])
                                for i in n_questions])
    datasets = np.array(pairs.datasets)
    rows = []
    for dataset in DATASETS:
        mine = datasets == dataset
        n = int(mine.sum())
        for label, found in hits.items():
            system = f"{name}:{label}"
            rows.append(_row(system, dataset, "acc@1", float(found[mine].mean()), n, "val"))
            for other, against in (("fused", hits["rank-fused"]), ("minilm", minilm_hits)):
                if label == "rank-fused" and other == "fused":
                    continue
                rows += [_row(system, dataset, f"wins_vs_{other}",
                              int((found & ~against)[mine].sum()), n, "val"),
                         _row(system, dataset, f"losses_vs_{other}",
                              int((~found & against)[mine].sum()), n, "val")]
        rows.append(_row(f"{name}:pairs-read", dataset, "pairs_per_query",
                         float(np.mean([read[i].sum() for i in np.flatnonzero(mine)])), n,
                         "val"))
    return [{**row, "chunking": chunking} for row in rows]


def chunking_rows(data: Chunking, systems: dict, calibrations: dict, tune_all) -> list[dict]:
    """Every row of one chunking: ``systems`` names retriever settings, ``calibrations`` their
    calibrations; ``tune_all``: the zero-shot tune pairs of every chunking, which the
    zero-shot calibration and the baselines are fitted on."""
    from invar_rag_integrations.evaluation.metrics import has_answer
    from invar_rag_integrations.training.calibrate import fit_calibration

    chunking, retriever, rows = data.name, data.retriever, []
    questions = data.questions["val"]
    firsts = retriever.stage1.retrievers[1].search([q.question for q in questions], 1)
    minilm = np.array([has_answer(q.answers, retriever.passages[r.ids[0]].full_text())
                       for q, r in zip(questions, firsts)])
    datasets = np.array([q.dataset for q in questions])
    rows += [{**_row("minilm", d, "acc@1", float(minilm[datasets == d].mean()),
                     int((datasets == d).sum()), "val"), "chunking": chunking} for d in DATASETS]
    for system, settings in systems.items():
        tune, val = data.pairs("tune", settings), data.pairs("val", settings)
        calibration = calibrations[system]
        _, read = replay(val, settings)
        rows += error_rows(system, chunking, val, served(calibration, "retriever", val, read))
        rows += error_rows(f"{system}-reranker", chunking, val,
                           served(calibration, "reranker", val, read))
        refit = fit_calibration(tune, f"{chunking} tune")  # its own chunking's tune pairs only
        rows += error_rows(f"{system}-own-chunking", chunking, val,
                           served(refit, "retriever", val, read))
        rich = fit_calibration(tune, f"{chunking} tune, rich read model", RICH_FEATURES)
        rows += ranking_rows(system, chunking, val, settings,
                             {"rank-probability": calibration, "rank-rich-probability": rich},
                             minilm)
        if system == "upr-zero-shot":  # the baselines, fitted on the same tune pairs
            rows += error_rows("platt-fused", chunking, val, single_feature(
                tune_all, val, lambda p: [t["fused"] for t in p.tables]))
            rows += error_rows("cosine-calibrated", chunking, val, single_feature(
                tune_all, val, lambda p: [t["cosine"] for t in p.tables]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", help="folder with odqa/ (default: $INVAR_RAG_DATA or "
                                           "../shared/data)")
    parser.add_argument("--chunkings", nargs="+", default=list(CHUNKINGS), choices=CHUNKINGS)
    parser.add_argument("--long-val-sample", type=int,
                        help="val questions per dataset (seeded) on the chunkings other than "
                             "passages (default: all)")
    parser.add_argument("--write-embedded", action="store_true",
                        help="store the calibrators fitted on the passages tune pairs for the "
                             "embedded settings as the embedded zero-shot calibration")
    args = parser.parse_args(argv)
    from benchmarks.run import save_and_render
    from invar_rag_integrations.invar import InvarSettings
    from invar_rag_integrations.invar.artifacts import store_calibration
    from invar_rag_integrations.invar.calibration import ZERO_SHOT_FILE, Calibration
    from invar_rag_integrations.system import read_manifest
    from invar_rag_integrations.training.calibrate import (
        LabelledPairs,
        cross_fitted,
        fit_calibration,
    )

    demo = read_manifest(DEMO_SYSTEM)["retriever"]
    systems = {"upr-zero-shot": InvarSettings(), "demo-system": InvarSettings(**demo["settings"])}
    data = {c: Chunking(c, args.data_dir, None if c == "passages" else args.long_val_sample)
            for c in args.chunkings}
    rows: list[dict] = []
    parts = [d.pairs("tune", systems["upr-zero-shot"]) for d in data.values()]
    tune = LabelledPairs([t for p in parts for t in p.tables], [y for p in parts for y in p.labels],
                         [d for p in parts for d in p.datasets], systems["upr-zero-shot"])
    # the zero-shot calibration is fitted on the tune pairs of every chunking; the demo
    # system's as `make demo-system` fits it (invar-rag calibrate on the passages tune pairs)
    calibrations = {"upr-zero-shot": fit_calibration(
        tune, f"python -m benchmarks.calibration --write-embedded (the tune questions over "
              f"{' and '.join(data)})"),
        "demo-system": Calibration.from_dict(demo["calibration"])}
    if args.write_embedded:
        demo_tune = data["passages"].pairs("tune", systems["demo-system"])
        calibrations["demo-system"] = fit_calibration(demo_tune, DEMO_COMMAND)
        store_calibration(DEMO_SYSTEM, calibrations["demo-system"], {
            "fitted_on": dict(calibrations["demo-system"].fitted_on),
            "cross_fitted": cross_fitted(demo_tune)})
        print(f"stored the demo system's calibration in {DEMO_SYSTEM}", file=sys.stderr)
    for path, errors in cross_fitted(tune).items():
        rows += [{**_row(f"upr-zero-shot-{path}", "all", f"cross_fitted_{m}", v,
                         sum(len(x) for x in tune.labels), "tune"),
                  "chunking": "+".join(data)} for m, v in errors.items()]
    if args.write_embedded:
        ZERO_SHOT_FILE.write_text(json.dumps(calibrations["upr-zero-shot"].to_dict(), indent=2,
                                             sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {ZERO_SHOT_FILE}", file=sys.stderr)
    for chunking in data.values():
        rows += chunking_rows(chunking, systems, calibrations, tune)
    save_and_render("calibration", rows, "benchmarks.calibration", argv)


if __name__ == "__main__":
    main()
