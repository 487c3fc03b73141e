"""A training run as one object: what it trains (model, tasks, collators), how (plan, optimizer, sampler,
regularizers, balancer: the resumable part), where (device, ranks, run folder) and its configuration. Built
once by `mtdnn.train`, then handed whole to the loop, the evaluations and the report (torchtune's recipe
owns its state the same way), so none of them takes a dozen parameters."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtdnn.core.config import TrainerConfig
from mtdnn.core.distributed import Distributed
from mtdnn.data.loading import TaskBatches, TaskData
from mtdnn.kinds.collate import Collator
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.training.resume import Resumable, TrainState


@dataclass
class Plan:
    """How long and how often, fixed before the first step."""

    total_steps: int
    batches_per_epoch: int  # one pass over every task's train split
    eval_every: int
    steps_per_epoch: float = 1.0


MIN_EVAL_EVERY = 10


def make_plan(cfg: TrainerConfig, batches: dict[str, TaskBatches]) -> Plan:
    per_epoch = sum(len(b) for b in batches.values())
    per_step = cfg.grad_accum * min(cfg.tasks_per_step, len(batches))  # micro-batches in one optimizer step
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch / per_step))
    # evals_per_epoch, but never more often than every MIN_EVAL_EVERY steps (tiny data: not after every step)
    per_eval = max(MIN_EVAL_EVERY, math.ceil(per_epoch / per_step / cfg.evals_per_epoch))
    eval_every = cfg.eval_every or min(per_eval, total)
    return Plan(
        total_steps=total,
        batches_per_epoch=per_epoch,
        eval_every=eval_every,
        steps_per_epoch=per_epoch / per_step,
    )


@dataclass
class Run:
    cfg: Any  # the composed run configuration (DictConfig)
    output_dir: Path
    device: torch.device
    dist: Distributed
    tasks: dict[str, TaskData]  # each task's spec, raw and encoded splits
    model: MultiTaskModel
    collators: dict[str, Collator]
    plan: Plan
    resumable: Resumable  # optimizer, scheduler, sampler, batches, regularizers, balancer, counters
    distiller: Any = None  # a Distiller when distilling
    affinity: Any = None  # an AffinityMonitor in multi-task runs (rank 0 measures)
    resumed_at_step: int | None = None  # the step a resumed run continued from (None: a fresh run)
    compiled: bool = False  # the encoder ran compiled to the end (trainer.compile, no fallback to eager)
    started: float = field(default_factory=time.time)

    @property
    def trainer(self) -> TrainerConfig:
        return self.cfg.trainer

    @property
    def specs(self) -> dict:
        return {name: data.spec for name, data in self.tasks.items()}

    @property
    def sizes(self) -> dict[str, int]:
        """Train rows per task."""
        return {name: len(data.encoded["train"]) for name, data in self.tasks.items()}

    @property
    def state(self) -> TrainState:
        return self.resumable.state
