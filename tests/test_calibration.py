"""Calibrated relevance: the calibrators, their fit, their place in a system's manifest and the
``invar-rag calibrate`` command, on tiny models."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from invar_rag_integrations.demo import demo_passages
from invar_rag_integrations.evaluation.metrics import calibration_errors
from invar_rag_integrations.invar import InvarSettings, TwoStageRetriever
from invar_rag_integrations.invar.artifacts import load_reranker, save_retriever
from invar_rag_integrations.invar.calibration import (
    READ_FEATURES,
    UNREAD_FEATURES,
    Calibration,
    Logistic,
    check_threshold,
    pair_features,
    zero_shot_calibration,
)
from invar_rag_integrations.system import FORMAT, MANIFEST, read_manifest
from invar_rag_integrations.training.calibrate import (
    LabelledPairs,
    cross_fitted,
    fit_calibration,
    fit_logistic,
)


def _pairs(n_questions: int = 120, seed: int = 0) -> LabelledPairs:
    """Questions whose candidates' relevance follows a known logistic model of the features."""
    rng = np.random.default_rng(seed)
    settings = InvarSettings()
    tables, labels = [], []
    for _ in range(n_questions):
        table = pair_features(settings, rng.normal(-3, 1, 5), rng.normal(-4, 0.5),
                              rng.uniform(0, 1, 5), rng.integers(20, 400, 5),
                              rng.uniform(0, 1, 5), np.arange(5), rng.uniform(0, .03, 5))
        logit = 1.5 * (table["lm"] - table["prior"]) + 3.0 * table["cosine"] + table["bm25"] - 3
        tables.append(table)
        labels.append(rng.uniform(size=5) < 1 / (1 + np.exp(-logit)))
    return LabelledPairs(tables, labels, ["squad"] * n_questions, settings)


def test_a_fitted_logistic_recovers_the_model_and_is_stored_in_raw_units() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal([5.0, -2.0], [3.0, 0.5], size=(20_000, 2))
    y = rng.uniform(size=len(x)) < 1 / (1 + np.exp(-(0.5 * x[:, 0] - 2.0 * x[:, 1] - 4.0)))
    model = fit_logistic(x, y, ("a", "b"))
    assert model.weights == pytest.approx((0.5, -2.0), abs=0.1)
    assert model.intercept == pytest.approx(-4.0, abs=0.3)
    again = Logistic.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.allclose(again.probability({"a": x[:9, 0], "b": x[:9, 1]}),
                       model.probability({"a": x[:9, 0], "b": x[:9, 1]}))
    with pytest.raises(ValueError, match="at least 20 candidates that hold an answer"):
        fit_logistic(x[:100], np.zeros(100, bool), ("a", "b"))
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        model.probability({"a": x[:3, 0]})


def test_fitted_probabilities_are_calibrated_on_new_questions() -> None:
    calibration = fit_calibration(_pairs(400), "synthetic")
    test = _pairs(400, seed=1)
    read = [np.ones(5, bool) for _ in test.tables]
    found = np.concatenate([calibration.probabilities("retriever", t, r)
                            for t, r in zip(test.tables, read)])
    errors = calibration_errors(found, np.concatenate(test.labels))
    assert errors["ece"] < 0.05 and errors["auroc_relevant"] > 0.7
    unread = np.concatenate([calibration.probabilities("retriever", t, ~r)
                             for t, r in zip(test.tables, read)])
    assert ((unread > 0) & (unread < 1)).all()  # the unread model reads no LM feature
    assert calibration_errors(unread, np.concatenate(test.labels))["auroc_relevant"] < \
        errors["auroc_relevant"]
    assert set(cross_fitted(_pairs(100))) == {"reranker", "retriever"}
    assert calibration.models["reranker"].features == READ_FEATURES
    assert calibration.models["retriever-unread"].features == UNREAD_FEATURES["retriever"]
    assert calibration.fitted_on["questions"] == 400


def test_calibration_errors_match_their_definitions() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    y = np.array([0, 0, 1, 1, 0], bool)
    errors = calibration_errors(p, y)
    assert errors["ece"] == pytest.approx((2 * .05 + 2 * .05 + .55) / 5)
    assert errors["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert errors["auroc_relevant"] == 1.0
    assert np.isnan(calibration_errors(p, np.ones(5, bool))["auroc_relevant"])


def test_thresholds_are_probabilities() -> None:
    assert check_threshold(None) is None and check_threshold(1) == 1.0
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"score_threshold must be a relevance probability"):
            check_threshold(bad)


def test_the_embedded_calibration_has_every_model() -> None:
    calibration = zero_shot_calibration()
    assert calibration.calibrated and calibration.fitted_on["questions"] > 0
    with pytest.raises(ValueError, match="needs models"):
        Calibration({"reranker": calibration.models["reranker"]})


@pytest.fixture()
def system(tmp_path: Path, tiny_lm_dir: Path, tiny_encoder_dir: Path) -> Path:
    retriever = TwoStageRetriever.zero_shot(str(tiny_lm_dir), str(tiny_encoder_dir),
                                         InvarSettings(candidates=3), precision="float32",
                                         show_progress=False)
    retriever.reranker.calibration = fit_calibration(_pairs(), "synthetic")
    return save_retriever(retriever.reranker, tmp_path / "system")


def test_a_system_stores_its_calibration_in_its_identity(system: Path) -> None:
    manifest = read_manifest(system)
    assert manifest["format"] == FORMAT and manifest["retriever"]["calibration"]
    reranker, _ = load_reranker(system)
    assert reranker.calibration.calibrated and reranker.status()["scores_calibrated"]
    assert reranker.calibration.to_dict() == manifest["retriever"]["calibration"]
    edited = json.loads((system / MANIFEST).read_text())
    edited["retriever"]["calibration"]["models"]["retriever"]["intercept"] += 1.0
    (system / MANIFEST).write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="differ from the ones the manifest was written for"):
        load_reranker(system)


def test_a_system_written_before_calibration_loads_and_says_so(system: Path,
                                                               tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(system, old)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["format"] = "invar-rag/1"
    del manifest["retriever"]["calibration"]
    from invar_rag_integrations.invar.artifacts import retriever_hash

    manifest["retriever"]["hash"] = retriever_hash(
        manifest["retriever"]["settings"], manifest["base_model"]["identity"],
        manifest["coarse_encoder"]["identity"], None, None, None)
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="scores have not been calibrated"):
        reranker, _ = load_reranker(old)
    assert not reranker.calibration.calibrated
    assert reranker.status()["scores_calibrated"] is False
    ranked = reranker.rerank("who discovered penicillin",
                             [p.full_text() for p in demo_passages()[:4]])
    assert all(0 < p < 1 for _, p in ranked)


def _question_folder(root: Path) -> Path:
    """The demo corpus with its questions, ten times over, as ``make-questions`` writes them
    (dataset ``synthetic``)."""
    from invar_rag_integrations.demo import demo_questions

    odqa = root / "odqa"
    odqa.mkdir(parents=True)
    (odqa / "corpus.jsonl").write_text("".join(
        json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n"
        for p in demo_passages()), encoding="utf-8")
    (odqa / "dev_questions.jsonl").write_text("".join(
        json.dumps({"dataset": "synthetic", "id": f"{q.id}-{i}", "question": q.question,
                    "answers": list(q.answers)}) + "\n"
        for i in range(10) for q in demo_questions()), encoding="utf-8")
    return root


def test_calibrate_command_fits_on_a_question_folder_and_keeps_the_rest(
        system: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from invar_rag_integrations.cli import main

    before = read_manifest(system)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["calibrate", str(system), "--data-dir", str(_question_folder(tmp_path / "q")),
              "--datasets", "synthetic"])
    after = read_manifest(system)
    report = json.loads(capsys.readouterr().out)
    assert report["fitted_on"]["questions"] == after["retriever"]["calibration"]["fitted_on"][
        "questions"] > 0
    assert set(report["cross_fitted"]) == {"reranker", "retriever"}
    assert after["retriever"]["calibration"] != before["retriever"]["calibration"]
    assert after["retriever"]["hash"] != before["retriever"]["hash"]
    assert after["retriever"]["settings"] == before["retriever"]["settings"]
    assert after["metrics"]["calibration"] == report
    reranker, _ = load_reranker(system)  # the renewed hash checks out
    assert reranker.calibration.fitted_on["source"].startswith("invar-rag calibrate")
