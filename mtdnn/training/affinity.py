"""Negative-transfer diagnostics: which tasks help which, measured while a multi-task run trains.

Every `trainer.affinity_every` optimizer steps (0: off; a single-task run has nothing to measure), on one
fixed probe batch per task (the first rows of its train split, in eval mode: no dropout is drawn, so the
run's random stream, data order and weights are untouched):

  gradient cosine  cos(g_i, g_j) of the tasks' gradients of the shared parameters (every trainable parameter
                   outside the heads: the encoder, or its adapters)
  lookahead        Z_i->j = 1 - L_j(theta - lr g_i) / L_j(theta) (Fifty et al. 2021, TAG, eq. 2, with a plain
                   SGD step of the encoder's current learning rate on the shared parameters): how a step on
                   task i alone changes task j's loss; > 0: i helps j, < 0: i hurts j

Each measurement goes into the next line of train_log.jsonl (keys affinity/step, affinity/cos/<i>,<j> and
affinity/lookahead/<i>-><j>) and TensorBoard (train/affinity/...); summary.json's `task_affinity` holds the
means over the run (read back from the log, so a resumed run's earlier measurements count), drawn as
affinity.png in the run folder. A task that every other task consistently hurts (lookahead < 0 in 80% or more
of at least 5 measurements) gets one warning.

Written here rather than taken from LibMTL: LibMTL's weighting methods combine gradients but measure no
affinity, and TAG's reference code is TensorFlow.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from itertools import combinations
from pathlib import Path

import torch

log = logging.getLogger("mtdnn")
HURT_SHARE = 0.8  # the share of measurements a task must be hurt in to be named
HURT_AFTER = 5  # measurements before judging


def probe_batches(tasks: dict, collators: dict, rows: int, device: torch.device) -> dict[str, dict]:
    """Each task's fixed probe batch: the first `rows` rows of its encoded train split."""
    probes = {}
    for name, data in tasks.items():
        train = data.encoded["train"]
        batch = collators[name](train[: min(rows, len(train))])
        probes[name] = {k: v.to(device) for k, v in batch.items()}
    return probes


def shared_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("heads.")]


def task_loss(model, task: str, batch: dict) -> torch.Tensor:
    return model.head(task).loss(model(task, **batch), batch)


def flat_gradient(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def measure(model, probes: dict[str, dict], lr: float) -> dict[str, dict[str, float]]:
    """One measurement at the current weights: {"cos": {"i,j": ...}, "lookahead": {"i->j": ...}}."""
    params = shared_parameters(model)
    was_training = model.training
    model.eval()
    try:
        losses, grads = {}, {}
        for task, batch in probes.items():
            loss = task_loss(model, task, batch)
            losses[task], grads[task] = float(loss.detach()), flat_gradient(loss, params)
        cos = {
            f"{i},{j}": float(torch.nn.functional.cosine_similarity(grads[i], grads[j], dim=0))
            for i, j in combinations(sorted(probes), 2)
        }
        return {"cos": cos, "lookahead": lookahead(model, probes, params, grads, losses, lr)}
    finally:
        model.train(was_training)


@torch.no_grad()
def lookahead(model, probes, params, grads, losses, lr: float) -> dict[str, float]:
    """Z_i->j for every ordered pair: step the shared parameters by -lr g_i, score every task, restore."""
    saved = [p.detach().clone() for p in params]
    found = {}
    for i in probes:
        offset = 0
        for p in params:
            p.sub_(lr * grads[i][offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        for j in probes:
            if j != i:
                found[f"{i}->{j}"] = 1.0 - float(task_loss(model, j, probes[j])) / losses[j]
        for p, original in zip(params, saved):
            p.copy_(original)
    return found


class AffinityMonitor:
    """Measures every `every` steps and warns once per task that the others keep hurting."""

    def __init__(self, probes: dict[str, dict], every: int):
        self.probes, self.every = probes, every
        self.hurt: dict[str, list[bool]] = {task: [] for task in probes}
        self.warned: set[str] = set()
        self.pending: dict[str, float] = {}  # the last measurement, until the next log line takes it
        self.seconds = 0.0  # spent measuring (its overhead on the run's training time)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def measure(self, model, step: int, lr: float) -> None:
        started = time.perf_counter()
        record = measure(model, self.probes, lr)
        for j in self.probes:
            helps = [v for k, v in record["lookahead"].items() if k.endswith(f"->{j}")]
            self.hurt[j].append(all(v < 0 for v in helps))
            self.warn_if_hurt(j)
        self.seconds += time.perf_counter() - started
        self.pending = {"affinity/step": float(step), "affinity/seconds": self.seconds}
        self.pending.update(
            {f"affinity/{kind}/{key}": v for kind in record for key, v in record[kind].items()}
        )

    def stats(self) -> dict[str, float]:
        """The pending measurement for the log line being written (once)."""
        pending, self.pending = self.pending, {}
        return pending

    def warn_if_hurt(self, task: str) -> None:
        seen = self.hurt[task]
        if task in self.warned or len(seen) < HURT_AFTER or sum(seen) < HURT_SHARE * len(seen):
            return
        self.warned.add(task)
        log.warning(
            "task %s: a step on any other task raised its loss in %d of %d affinity measurements "
            "(lookahead < 0): the others hurt it; see summary.json's task_affinity and affinity.png",
            task,
            sum(seen),
            len(seen),
        )


def summarise(log_path: Path) -> dict | None:
    """The means of every affinity measurement in the run's train log (None when there is none)."""
    if not log_path.is_file():
        return None
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if "affinity/step" in line]
    if not lines:
        return None

    def means(kind: str) -> dict[str, float]:
        keys = [k for k in lines[0] if k.startswith(f"affinity/{kind}/")]
        return {k.split("/", 2)[2]: statistics.fmean(line[k] for line in lines) for k in keys}

    return {
        "measurements": len(lines),
        "seconds": lines[-1].get("affinity/seconds", math.nan),  # measuring, in all (this run's part)
        "gradient_cosine": means("cos"),
        "lookahead": means("lookahead"),
    }


def interval(every: int | None, tasks: int) -> int:
    """Steps between measurements: `every`, or by default (None) rare enough to cost about 3% of the step
    time. A measurement costs K backward and K (K - 1) forward passes of one batch plus copies of the shared
    weights, measured at 8.7 steps' worth for 3 tasks (MiniLM-L6, batch 16, 2 CPU threads), so 25 K (K + 1)
    steps apart: 150 for 2 tasks, 300 for 3, 500 for 4."""
    return every if every is not None else max(100, 25 * tasks * (tasks + 1))


def heatmap(summary: dict, tasks: list[str], path: Path) -> None:
    """affinity.png: the mean gradient cosine (symmetric) and lookahead (row i helps column j) per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(tasks)
    cos = torch.full((k, k), float("nan"))
    look = torch.full((k, k), float("nan"))
    for a, i in enumerate(tasks):
        for b, j in enumerate(tasks):
            if i != j:
                cos[a, b] = summary["gradient_cosine"][f"{min(i, j)},{max(i, j)}"]
                look[a, b] = summary["lookahead"][f"{i}->{j}"]
    figure, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * k, 2 + 0.6 * k))
    panels = ((axes[0], cos, "gradient cosine"), (axes[1], look, "lookahead: row helps column"))
    for axis, values, title in panels:
        bound = float(values.nan_to_num(0).abs().max()) or 1.0
        image = axis.imshow(values.numpy(), cmap="RdBu", vmin=-bound, vmax=bound)
        axis.set_xticks(range(k), tasks, rotation=45, ha="right"), axis.set_yticks(range(k), tasks)
        axis.set_title(title)
        figure.colorbar(image, ax=axis, shrink=0.8)
    figure.tight_layout()
    staging = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(staging, dpi=110)
    plt.close(figure)
    staging.replace(path)
