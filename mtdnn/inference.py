"""Run a model over a split: predictions for every row, and metrics where gold labels exist."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from mtdnn import metrics
from mtdnn.data import UNLABELED, Collator, TaskData, row_lengths
from mtdnn.distributed import inference_shard
from mtdnn.heads import IGNORE
from mtdnn.model import MultiTaskModel
from mtdnn.rundir import write_atomic
from mtdnn.tasks import TaskSpec


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def collator_for(spec: TaskSpec, tokenizer, multiple_of: int):
    pad = tokenizer.pad_token_id or 0
    if spec.head == "ranking":
        from mtdnn.ranking import GroupCollator
        return GroupCollator(pad, multiple_of)
    return Collator(pad, multiple_of, regression=spec.head == "regression",
                    label_pad=IGNORE if spec.head == "tagging" else None)


def _row_output(head: str, batch: dict, logits: torch.Tensor, j: int) -> torch.Tensor:
    """Row j's own output: its logits, a group's candidate scores, or a window's/sentence's unpadded tokens."""
    if head == "ranking":
        return logits[batch["group"] == j]
    if head in ("span", "tagging"):
        return logits[j, : int(batch["attention_mask"][j].sum())]
    return logits[j]


@torch.no_grad()
def forward_rows(model: MultiTaskModel, spec: TaskSpec, dataset, collate, batch_size: int, device: torch.device,
                 bf16: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(output, labels) of every row of an encoded split, in row order, on the CPU. Rows run shortest first,
    so each batch pads little (an in-order batch of 128 reviews pads almost all of them to the longest)."""
    was_training = model.training
    model.eval()
    order = np.argsort(row_lengths(dataset), kind="stable")
    shard = inference_shard()  # under torchrun evaluation: this rank's every N-th row, gathered below
    if shard is not None:
        order = order[shard.rank::shard.world]
    found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        batch = collate(dataset[rows.tolist()])
        on_device = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, bf16):
            logits = model(spec.name, **on_device).float().cpu()
        for j, row in enumerate(rows):
            found[int(row)] = (_row_output(spec.head, batch, logits, j), batch["labels"][j])
    if shard is not None:
        found = shard.gather_rows(found)
    model.train(was_training)
    return [found[i][0] for i in range(len(dataset))], [found[i][1] for i in range(len(dataset))]


def predict_split(model: MultiTaskModel, spec: TaskSpec, dataset, collate, batch_size: int,
                  device: torch.device, bf16: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sentence-level heads: (predictions for every row, gold labels), in row order."""
    outputs, labels = forward_rows(model, spec, dataset, collate, batch_size, device, bf16)
    return model.head(spec.name).predict(torch.stack(outputs)), torch.stack(labels)


def labeled_mask(spec: TaskSpec, gold: torch.Tensor) -> torch.Tensor:
    return ~torch.isnan(gold) if spec.head == "regression" else gold != UNLABELED


def split_metrics(spec: TaskSpec, pred: dict[str, torch.Tensor], gold: torch.Tensor) -> dict[str, float] | None:
    """Metrics over the labeled rows; None when the split carries no labels (e.g. GLUE test)."""
    mask = labeled_mask(spec, gold)
    if not bool(mask.any()):
        return None
    return metrics.compute(spec.metrics, {k: v[mask] for k, v in pred.items()}, gold[mask], spec.num_labels)


def evaluate_split(model: MultiTaskModel, spec: TaskSpec, raw, encoded, collate, batch_size: int,
                   device: torch.device, bf16: bool = False) -> tuple[list[dict], dict[str, float] | None]:
    """Prediction records (one per input example) and metrics (None without gold labels), for any head."""
    if spec.head in ("classification", "regression"):
        pred, gold = predict_split(model, spec, encoded, collate, batch_size, device, bf16)
        return sentence_records(spec, raw, pred), split_metrics(spec, pred, gold)
    outputs = [o.numpy() for o in forward_rows(model, spec, encoded, collate, batch_size, device, bf16)[0]]
    if spec.head == "span":
        from mtdnn import span
        records = span.decode(spec, raw, encoded, outputs)
        return records, span.span_metrics(spec, raw, records)
    if spec.head == "ranking":
        from mtdnn import ranking
        return ranking.evaluate(spec, raw, outputs)
    from mtdnn import tagging
    return tagging.evaluate(spec, raw, encoded, outputs)


def evaluate_tasks(model: MultiTaskModel, tasks: dict[str, TaskData], collators: dict[str, Collator],
                   split: str, batch_size: int, device: torch.device, bf16: bool) -> dict[str, dict[str, float]]:
    results = {}
    for name, data in tasks.items():
        if split not in data.encoded:
            continue
        _, scores = evaluate_split(model, data.spec, data.raw[split], data.encoded[split], collators[name],
                                   batch_size, device, bf16)
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


def sentence_records(spec: TaskSpec, raw, pred: dict[str, torch.Tensor]) -> list[dict]:
    """Per row: its id (or row number), inputs, predicted label name and scores, or the predicted value."""
    cols = spec.columns
    records = []
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
        records.append(record)
    return records


def write_records(path: Path, spec: TaskSpec, records: list[dict]) -> None:
    """One JSON line per input; span tasks also get <name>.json in the official SQuAD layout {id: answer}."""
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    if spec.head == "span":
        from mtdnn.span import official_predictions
        write_atomic(path.with_suffix(".json"), json.dumps(official_predictions(records), ensure_ascii=False))
