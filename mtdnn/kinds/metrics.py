"""Sentence-level validation metrics computed by torchmetrics, shared by the kinds that predict one label
or value per row (classification, regression); the first metric of a task is its main one.

A metric the data cannot define is NaN ("undefined"), never a number that looks like a score: AUC and MCC
when the gold labels hold one class, binary F1 when the gold holds no positive row, Pearson and Spearman
when the gold or the prediction is constant. (torchmetrics returns 0 or NaN there, and a 0 would compete
for the best checkpoint.) MCC of constant predictions on two-class gold stays 0, the usual convention (as
scikit-learn)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

MetricFn = Callable[[dict[str, torch.Tensor], torch.Tensor, int], float]
UNDEFINED = float("nan")


def torchmetrics_functional():
    """torchmetrics.functional, imported on first use: importing it pulls in scipy, matplotlib and
    transformers (~4 s on 2 cores), which a command that stops at a config or data error never needs."""
    import torchmetrics.functional

    return torchmetrics.functional


def is_undefined(value: float | None) -> bool:
    return value is None or math.isnan(value)


def show(value: float | None) -> str:
    """A metric for people: 4 decimals, or 'undefined'."""
    return "undefined" if is_undefined(value) else f"{value:.4f}"


def _one_class(gold: torch.Tensor) -> bool:
    return gold.unique().numel() < 2


def _constant(values: torch.Tensor) -> bool:
    return values.numel() < 2 or bool((values == values[0]).all())


def _accuracy(pred: dict, gold: torch.Tensor, k: int) -> float:
    return (
        torchmetrics_functional().accuracy(pred["prediction"], gold, task="multiclass", num_classes=k).item()
    )


def _f1(pred: dict, gold: torch.Tensor, k: int) -> float:
    # binary tasks report F1 of the positive (second) label, as GLUE does for MRPC/QQP; else macro F1
    if k == 2:
        if not bool((gold == 1).any()):
            return UNDEFINED
        return torchmetrics_functional().f1_score(pred["prediction"], gold, task="binary").item()
    return (
        torchmetrics_functional()
        .f1_score(pred["prediction"], gold, task="multiclass", num_classes=k, average="macro")
        .item()
    )


def _f1_macro(pred: dict, gold: torch.Tensor, k: int) -> float:
    return (
        torchmetrics_functional()
        .f1_score(pred["prediction"], gold, task="multiclass", num_classes=k, average="macro")
        .item()
    )


def _mcc(pred: dict, gold: torch.Tensor, k: int) -> float:
    if _one_class(gold):
        return UNDEFINED
    return (
        torchmetrics_functional()
        .matthews_corrcoef(pred["prediction"], gold, task="multiclass", num_classes=k)
        .item()
    )


def _auc(pred: dict, gold: torch.Tensor, k: int) -> float:
    if _one_class(gold):
        return UNDEFINED
    return torchmetrics_functional().auroc(pred["scores"][:, 1], gold, task="binary").item()


def _pearson(pred: dict, gold: torch.Tensor, k: int) -> float:
    if _constant(gold) or _constant(pred["prediction"]):
        return UNDEFINED
    return torchmetrics_functional().pearson_corrcoef(pred["prediction"].double(), gold.double()).item()


def _spearman(pred: dict, gold: torch.Tensor, k: int) -> float:
    if _constant(gold) or _constant(pred["prediction"]):
        return UNDEFINED
    return torchmetrics_functional().spearman_corrcoef(pred["prediction"].double(), gold.double()).item()


def _mse(pred: dict, gold: torch.Tensor, k: int) -> float:
    return torchmetrics_functional().mean_squared_error(pred["prediction"], gold.float()).item()


def _mae(pred: dict, gold: torch.Tensor, k: int) -> float:
    return torchmetrics_functional().mean_absolute_error(pred["prediction"], gold.float()).item()


METRICS: dict[str, MetricFn] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "f1_macro": _f1_macro,
    "mcc": _mcc,
    "auc": _auc,
    "pearson": _pearson,
    "spearman": _spearman,
    "mse": _mse,
    "mae": _mae,
}


def compute(
    names: list[str], pred: dict[str, torch.Tensor], gold: torch.Tensor, num_labels: int
) -> dict[str, float]:
    return {name: METRICS[name](pred, gold, num_labels) for name in names}
