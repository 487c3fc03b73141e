"""dwa: dynamic weight average (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with Attention",
CVPR, eq. 7):

    w_i(t) = K exp(r_i(t-1) / T) / sum_j exp(r_j(t-1) / T),    r_i(t-1) = L_i(t-1) / L_i(t-2)

where L_i(t) is task i's mean training loss over period t (an epoch, as the paper; `period_steps` to change
it), T = 2, and w_i = 1 for the first two periods. A task whose loss falls more slowly gets more weight. A
task not seen in a period (possible when one task is tiny) keeps r = 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from mtdnn.balancers import Base, Setup, softmax_weights


@dataclass
class Config:
    temperature: float = 2.0  # T
    period_steps: Optional[int] = None  # optimizer steps per period; null: one epoch


def problems(config: Config, tasks: list[str]) -> list[str]:
    found = (
        [f"balancer.temperature: must be > 0, got {config.temperature}"] if config.temperature <= 0 else []
    )
    if config.period_steps is not None and config.period_steps < 1:
        found.append(f"balancer.period_steps: must be >= 1, got {config.period_steps}")
    return found


def dwa_weights(last: torch.Tensor, before: torch.Tensor, temperature: float) -> torch.Tensor:
    """The paper's eq. 7 from two periods' mean losses (NaN: the task was not seen; its ratio is 1)."""
    ratio = torch.nan_to_num(last / before, nan=1.0, posinf=1.0)
    return softmax_weights(ratio / temperature)


class DynamicWeightAverage(Base):
    needs_losses = True

    def __init__(self, config: Config, setup: Setup):
        super().__init__(config, setup)
        self.period = config.period_steps or max(1, round(setup.steps_per_epoch))
        k = len(setup.tasks)
        self.sums, self.counts = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        self.history: list[torch.Tensor] = []  # the last two periods' mean losses
        self.steps = 0
        self.shown = {t: 1.0 for t in setup.tasks}

    def weight(self, task: str) -> float:
        return self.shown[task]

    def end_step(self, losses: dict[str, float]) -> None:
        for task, loss in losses.items():
            i = self.setup.tasks.index(task)
            self.sums[i] += loss
            self.counts[i] += 1
        self.steps += 1
        if self.steps % self.period == 0:
            means = torch.where(self.counts > 0, self.sums / self.counts.clamp(min=1), torch.nan)
            self.history = [*self.history, means][-2:]
            self.sums.zero_(), self.counts.zero_()
            if len(self.history) == 2:
                weights = dwa_weights(self.history[1], self.history[0], self.config.temperature)
                self.shown = dict(zip(self.setup.tasks, weights.tolist()))

    def state_dict(self) -> dict:
        return {
            "sums": self.sums.clone(),
            "counts": self.counts.clone(),
            "history": list(self.history),
            "steps": self.steps,
            "shown": dict(self.shown),
        }

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.sums, self.counts = state["sums"].clone(), state["counts"].clone()
            self.history, self.steps, self.shown = (
                list(state["history"]),
                state["steps"],
                dict(state["shown"]),
            )


def build(config: Config, setup: Setup) -> DynamicWeightAverage:
    return DynamicWeightAverage(config, setup)
