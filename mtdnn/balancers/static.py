"""static: fixed per-task loss weights, L = sum_i w_i L_i (on top of each task YAML's `loss_weight`), e.g.
`balancer=static +balancer.weights.rte=2`. A task not named keeps weight 1."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtdnn.balancers import Base, Setup
from mtdnn.core.typed import suggest


@dataclass
class Config:
    weights: dict[str, float] = field(default_factory=dict)  # task -> fixed loss weight (unnamed: 1)


def problems(config: Config, tasks: list[str]) -> list[str]:
    found = [
        f"balancer.weights.{task}: not a selected task{suggest(task, tasks)}"
        for task in config.weights
        if task not in tasks
    ]
    found += [
        f"balancer.weights.{task}: must be >= 0, got {w}" for task, w in config.weights.items() if w < 0
    ]
    if tasks and all(config.weights.get(t, 1.0) == 0 for t in tasks):
        found.append("balancer.weights: every task has weight 0")
    return found


class Static(Base):
    def __init__(self, config: Config, setup: Setup):
        super().__init__(config, setup)
        self.shown = {task: float(config.weights.get(task, 1.0)) for task in setup.tasks}

    def weight(self, task: str) -> float:
        return self.shown[task]


def build(config: Config, setup: Setup) -> Static:
    return Static(config, setup)
