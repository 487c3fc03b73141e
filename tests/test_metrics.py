"""The metrics that choose the best checkpoint, against independent computations (numpy by hand, scipy) on random
inputs, and main_score's orientation of lower-is-better metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from mtdnn import metrics
from mtdnn.inference import main_score
from test_smart import _spec


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
    got = metrics.compute(["accuracy", "f1", "f1_macro", "mcc"] + (["auc"] if k == 2 else []),
                          {"prediction": torch.tensor(pred), "scores": torch.tensor(scores)}, torch.tensor(gold), k)
    macro = np.mean([f1_of(pred, gold, c) for c in range(k)])
    assert got["accuracy"] == pytest.approx((pred == gold).mean(), abs=1e-6)
    assert got["f1"] == pytest.approx(f1_of(pred, gold, 1) if k == 2 else macro, abs=1e-6)  # binary: the 2nd label
    assert got["f1_macro"] == pytest.approx(macro, abs=1e-6)
    assert got["mcc"] == pytest.approx(mcc_of(pred, gold, k), abs=1e-5)
    if k == 2:  # AUC = Mann-Whitney U / (n_pos n_neg) on the positive label's score
        u = stats.mannwhitneyu(scores[gold == 1, 1], scores[gold == 0, 1]).statistic
        assert got["auc"] == pytest.approx(u / ((gold == 1).sum() * (gold == 0).sum()), abs=1e-6)


def test_regression_metrics_against_scipy():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=200)
    pred = gold + rng.normal(scale=0.7, size=200)
    got = metrics.compute(["pearson", "spearman", "mse", "mae"], {"prediction": torch.tensor(pred, dtype=torch.float32)},
                          torch.tensor(gold, dtype=torch.float32), 1)
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
    assert main_score({"r": {"mse": 0.1, "pearson": 0.9}, "c": {"accuracy": 0.8}}, specs, "mean") > \
        main_score(results, specs, "mean")  # a smaller error is a better score
