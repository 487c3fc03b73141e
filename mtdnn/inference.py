"""Run a model over a split: predictions for every row, and metrics where gold labels exist."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import torch

from mtdnn import metrics
from mtdnn.data import UNLABELED, Collator, TaskData, eval_batches
from mtdnn.model import MultiTaskModel
from mtdnn.rundir import write_atomic
from mtdnn.tasks import TaskSpec


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def collator_for(spec: TaskSpec, tokenizer, multiple_of: int) -> Collator:
    return Collator(tokenizer.pad_token_id or 0, multiple_of, regression=spec.head == "regression")


@torch.no_grad()
def predict_split(model: MultiTaskModel, spec: TaskSpec, dataset, collate: Collator, batch_size: int,
                  device: torch.device, bf16: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(head predictions for every row, gold labels) for one encoded split, in row order."""
    was_training = model.training
    model.eval()
    outputs, gold = [], []
    for batch in eval_batches(dataset, batch_size, collate):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, bf16):
            logits = model(spec.name, **batch)
        outputs.append(model.head(spec.name).predict(logits))
        gold.append(batch["labels"])
    model.train(was_training)
    merged = {k: torch.cat([o[k] for o in outputs]).cpu() for k in outputs[0]}
    return merged, torch.cat(gold).cpu()


def labeled_mask(spec: TaskSpec, gold: torch.Tensor) -> torch.Tensor:
    return ~torch.isnan(gold) if spec.head == "regression" else gold != UNLABELED


def split_metrics(spec: TaskSpec, pred: dict[str, torch.Tensor], gold: torch.Tensor) -> dict[str, float] | None:
    """Metrics over the labeled rows; None when the split carries no labels (e.g. GLUE test)."""
    mask = labeled_mask(spec, gold)
    if not bool(mask.any()):
        return None
    return metrics.compute(spec.metrics, {k: v[mask] for k, v in pred.items()}, gold[mask], spec.num_labels)


def evaluate_tasks(model: MultiTaskModel, tasks: dict[str, TaskData], collators: dict[str, Collator],
                   split: str, batch_size: int, device: torch.device, bf16: bool) -> dict[str, dict[str, float]]:
    results = {}
    for name, data in tasks.items():
        if split not in data.encoded:
            continue
        pred, gold = predict_split(model, data.spec, data.encoded[split], collators[name], batch_size, device, bf16)
        scores = split_metrics(data.spec, pred, gold)
        if scores is not None:
            results[name] = scores
    return results


def main_score(results: dict[str, dict[str, float]], specs: dict[str, TaskSpec], best_metric: str) -> float:
    """The number 'best' is judged by: a named task/metric, or the mean of each task's main metric
    (signs flipped for errors, so higher is always better)."""
    def oriented(metric: str, value: float) -> float:
        return -value if metric in metrics.LOWER_IS_BETTER else value

    if best_metric != "mean":
        task, metric = best_metric.split("/", 1)
        return oriented(metric, results[task][metric])
    values = [oriented(specs[t].metrics[0], r[specs[t].metrics[0]]) for t, r in results.items()]
    return sum(values) / len(values) if values else -math.inf


def write_predictions(path: Path, spec: TaskSpec, raw, pred: dict[str, torch.Tensor]) -> None:
    """One JSON line per input row: its id (or row number), inputs, predicted label name or value, scores."""
    cols = spec.columns
    lines = []
    for i in range(len(raw)):
        row = raw[i]
        record = {"id": row[cols.id] if cols.id else i, "text": row[cols.text]}
        if cols.text_pair:
            record["text_pair"] = row[cols.text_pair]
        if spec.head == "classification":
            scores = pred["scores"][i].tolist()
            record["label"] = spec.labels[int(pred["prediction"][i])]
            record["scores"] = {name: round(s, 6) for name, s in zip(spec.labels, scores)}
        else:
            record["prediction"] = float(pred["prediction"][i])
        lines.append(json.dumps(record, ensure_ascii=False))
    write_atomic(path, "\n".join(lines) + "\n")
