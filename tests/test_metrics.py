"""The metrics that choose the best checkpoint, against independent computations (numpy by hand, scipy) on
random inputs, and main_score's orientation of lower-is-better metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from test_smart import _spec

from mtdnn.evaluation.engine import main_score
from mtdnn.kinds import metrics


def f1_of(pred: np.ndarray, gold: np.ndarray, label: int) -> float:
    tp = ((pred == label) & (gold == label)).sum()
    fp, fn = ((pred == label) & (gold != label)).sum(), ((pred != label) & (gold == label)).sum()
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def mcc_of(pred: np.ndarray, gold: np.ndarray, k: int) -> float:
    """Gorodkin's multi-class MCC from the confusion matrix."""
    c = np.zeros((k, k))
    np.add.at(c, (gold, pred), 1)
    t, p, n, s = c.sum(1), c.sum(0), np.trace(c), c.sum()
    return (n * s - t @ p) / np.sqrt((s**2 - p @ p) * (s**2 - t @ t))


@pytest.mark.parametrize("k", [2, 3])
def test_classification_metrics_against_hand_computations(k):
    rng = np.random.default_rng(k)
    gold = rng.integers(0, k, 300)
    pred = np.where(rng.random(300) < 0.6, gold, rng.integers(0, k, 300))  # right 60% of the time, plus luck
    scores = rng.random((300, k))
    got = metrics.compute(
        ["accuracy", "f1", "f1_macro", "mcc"] + (["auc"] if k == 2 else []),
        {"prediction": torch.tensor(pred), "scores": torch.tensor(scores)},
        torch.tensor(gold),
        k,
    )
    macro = np.mean([f1_of(pred, gold, c) for c in range(k)])
    assert got["accuracy"] == pytest.approx((pred == gold).mean(), abs=1e-6)
    # binary: the 2nd label
    assert got["f1"] == pytest.approx(f1_of(pred, gold, 1) if k == 2 else macro, abs=1e-6)
    assert got["f1_macro"] == pytest.approx(macro, abs=1e-6)
    assert got["mcc"] == pytest.approx(mcc_of(pred, gold, k), abs=1e-5)
    if k == 2:  # AUC = Mann-Whitney U / (n_pos n_neg) on the positive label's score
        u = stats.mannwhitneyu(scores[gold == 1, 1], scores[gold == 0, 1]).statistic
        assert got["auc"] == pytest.approx(u / ((gold == 1).sum() * (gold == 0).sum()), abs=1e-6)


def test_regression_metrics_against_scipy():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=200)
    pred = gold + rng.normal(scale=0.7, size=200)
    got = metrics.compute(
        ["pearson", "spearman", "mse", "mae"],
        {"prediction": torch.tensor(pred, dtype=torch.float32)},
        torch.tensor(gold, dtype=torch.float32),
        1,
    )
    assert got["pearson"] == pytest.approx(stats.pearsonr(pred, gold).statistic, abs=1e-5)
    assert got["spearman"] == pytest.approx(stats.spearmanr(pred, gold).statistic, abs=1e-5)
    assert got["mse"] == pytest.approx(np.mean((pred - gold) ** 2), rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(pred - gold)), rel=1e-5)


def test_main_score_flips_errors_and_reads_a_named_metric():
    reg = _spec("r", head="regression")
    reg.metrics = ["mse", "pearson"]
    cls = _spec("c")
    cls.metrics = ["accuracy"]
    specs = {"r": reg, "c": cls}
    results = {"r": {"mse": 0.4, "pearson": 0.9}, "c": {"accuracy": 0.8}}
    assert main_score(results, specs, "mean") == pytest.approx((-0.4 + 0.8) / 2)  # lower mse is better
    assert main_score(results, specs, "r/mse") == -0.4 and main_score(results, specs, "r/pearson") == 0.9
    assert main_score(
        {"r": {"mse": 0.1, "pearson": 0.9}, "c": {"accuracy": 0.8}}, specs, "mean"
    ) > main_score(results, specs, "mean")  # a smaller error is a better score


def _cls(pred, gold, scores=None) -> dict:
    pred, gold = torch.tensor(pred), torch.tensor(gold)
    scores = torch.tensor(scores if scores is not None else np.eye(2)[pred.numpy()] * 0.8 + 0.1)
    return metrics.compute(["accuracy", "f1", "mcc", "auc"], {"prediction": pred, "scores": scores}, gold, 2)


def test_metrics_the_data_cannot_define_are_undefined_not_zero():
    one_class = _cls([0, 1, 1, 0], [1, 1, 1, 1])
    assert one_class["accuracy"] == 0.5 and one_class["f1"] == pytest.approx(2 / 3)
    # scikit-learn's roc_auc_score refuses too
    assert np.isnan(one_class["auc"]) and np.isnan(one_class["mcc"])
    no_positive = _cls([0, 1, 0, 0], [0, 0, 0, 0])
    assert np.isnan(no_positive["f1"])
    constant_guess = _cls([1, 1, 1, 1], [0, 1, 0, 1])
    # defined: the usual convention
    assert constant_guess["mcc"] == 0.0 and not np.isnan(constant_guess["auc"])
    for pred, gold in (([1.0, 1.0, 1.0], [0.1, 0.5, 0.9]), ([0.2, 0.4, 0.1], [3.0, 3.0, 3.0])):
        got = metrics.compute(
            ["pearson", "spearman", "mse"], {"prediction": torch.tensor(pred)}, torch.tensor(gold), 1
        )
        with pytest.warns(stats.ConstantInputWarning):
            assert np.isnan(stats.pearsonr(pred, gold)[0])  # scipy's verdict on the same input
        assert np.isnan(got["pearson"]) and np.isnan(got["spearman"]) and not np.isnan(got["mse"])
    assert metrics.show(float("nan")) == "undefined" and metrics.show(0.25) == "0.2500"


def test_an_undefined_score_never_becomes_the_best_unless_nothing_else_was_defined():
    from mtdnn.training.loop import is_better
    from mtdnn.training.resume import TrainState

    state = TrainState()
    assert not is_better(float("nan"), state, last=False)  # first evaluation undefined: no best yet
    assert is_better(0.4, state, last=False)
    state.best_score, state.best_results = 0.4, {"t": {"auc": 0.4}}
    assert not is_better(float("nan"), state, last=True)  # a defined best is kept, even at the end
    assert not is_better(0.3, state, last=False) and is_better(0.5, state, last=False)
    # never defined: the last checkpoint, with a warning
    assert is_better(float("nan"), TrainState(), last=True)
    specs = {"a": _spec("a", "classification"), "b": _spec("b", "regression")}
    specs["a"].metrics, specs["b"].metrics = ["auc"], ["pearson"]
    mean = main_score({"a": {"auc": float("nan")}, "b": {"pearson": 0.9}}, specs, "mean")
    assert np.isnan(mean)  # a mean over a different set of tasks would not be comparable


def test_a_run_whose_validation_cannot_define_its_main_metric_says_so(tmp_path, caplog):
    import json

    from conftest import compose_train, sentiment_rows, tiny_overrides, write_task

    from mtdnn.train import run

    one_class = [r for r in sentiment_rows(60, 2) if r["label"] == "pos"]
    write_task(
        tmp_path / "tasks",
        "t",
        "classification",
        {"train": sentiment_rows(60, 1), "validation": one_class},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
        metrics=["auc", "accuracy"],
    )
    with caplog.at_level("INFO"):
        run(
            compose_train(
                tiny_overrides(
                    tmp_path / "tasks",
                    "task=t",
                    "trainer.max_steps=4",
                    "trainer.eval_every=2",
                    "predict_test=false",
                )
            ),
            tmp_path / "run",
        )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["validation"]["t"]["auc"] is None and 0 <= summary["validation"]["t"]["accuracy"] <= 1
    assert summary["best_step"] == 4 and json.loads((tmp_path / "run" / "best.json").read_text())["step"] == 4
    assert "no evaluation had a defined main score" in caplog.text and "auc=undefined" in caplog.text
