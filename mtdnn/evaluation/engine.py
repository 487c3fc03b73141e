"""Run a model over a split: predictions for every row, and metrics where gold labels exist."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from mtdnn import kinds
from mtdnn.core.atomic import write_atomic
from mtdnn.core.distributed import inference_shard
from mtdnn.core.interrupts import stop_if_interrupted
from mtdnn.data.loading import TaskData, row_lengths
from mtdnn.data.tasks import TaskSpec
from mtdnn.kinds.collate import Collator
from mtdnn.model.multitask import MultiTaskModel


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are (an ONNX Runtime model has none in torch: the CPU)."""
    return next(model.parameters(), torch.empty(0)).device


def collator_for(spec: TaskSpec, tokenizer, multiple_of: int):
    return kinds.of(spec).collator(spec, tokenizer.pad_token_id or 0, multiple_of)


@torch.no_grad()
def forward_rows(
    model: MultiTaskModel,
    spec: TaskSpec,
    dataset,
    collate,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(output, labels) of every row of an encoded split, in row order, on the CPU. Rows run shortest
    first, so each batch pads little (an in-order batch of 128 reviews pads almost all of them to the
    longest)."""
    was_training = model.training
    model.eval()
    kind = kinds.of(spec)
    if (outputs := kind.forward_split(spec, model, dataset, collate, batch_size, device, bf16)) is not None:
        model.train(was_training)  # every rank computes all rows here (bi ranking's embedding cache)
        return outputs, [torch.tensor(labels) for labels in dataset["labels"]]
    order = np.argsort(row_lengths(dataset), kind="stable")
    shard = inference_shard()  # under torchrun evaluation: this rank's every N-th row, gathered below
    if shard is not None:
        order = order[shard.rank :: shard.world]
    found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for start in range(0, len(order), batch_size):
        stop_if_interrupted()
        rows = order[start : start + batch_size]
        batch = collate(dataset[rows.tolist()])
        on_device = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, bf16):
            logits = model(spec.name, **on_device).float().cpu()
        for j, row in enumerate(rows):
            found[int(row)] = (kind.row_output(batch, logits, j), batch["labels"][j])
    if shard is not None:
        found = shard.gather_rows(found)
    model.train(was_training)
    return [found[i][0] for i in range(len(dataset))], [found[i][1] for i in range(len(dataset))]


def evaluate_split(
    model: MultiTaskModel,
    spec: TaskSpec,
    raw,
    encoded,
    collate,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
) -> tuple[list[dict], dict[str, float] | None]:
    """Prediction records (one per input example) and metrics (None without gold labels), for any kind."""
    outputs, _ = forward_rows(model, spec, encoded, collate, batch_size, device, bf16)
    return kinds.of(spec).evaluate(spec, raw, encoded, outputs)


def evaluate_tasks(
    model: MultiTaskModel,
    tasks: dict[str, TaskData],
    collators: dict[str, Collator],
    split: str,
    batch_size: int,
    device: torch.device,
    bf16: bool,
) -> dict[str, dict[str, float]]:
    results = {}
    for name, data in tasks.items():
        if split not in data.encoded:
            continue
        _, scores = evaluate_split(
            model, data.spec, data.raw[split], data.encoded[split], collators[name], batch_size, device, bf16
        )
        if scores is not None:
            results[name] = scores
    return results


def main_score(results: dict[str, dict[str, float]], specs: dict[str, TaskSpec], best_metric: str) -> float:
    """The number 'best' is judged by: a named task/metric, or the mean of each task's main metric (signs
    flipped for errors, so higher is always better). NaN when a metric it needs is undefined."""

    def oriented(task: str, metric: str, value: float) -> float:
        return -value if metric in kinds.of(specs[task]).lower_is_better else value

    if best_metric != "mean":
        task, metric = best_metric.split("/", 1)
        return oriented(task, metric, results[task][metric])
    values = [oriented(t, specs[t].metrics[0], r[specs[t].metrics[0]]) for t, r in results.items()]
    return sum(values) / len(values) if values else -math.inf


def write_records(path: Path, spec: TaskSpec, records: list[dict]) -> None:
    """One JSON line per input, plus whatever the kind writes beside it (span: the official SQuAD layout)."""
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    kinds.of(spec).write_extra(path, spec, records)
