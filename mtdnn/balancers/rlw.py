"""rlw: random loss weighting (Lin et al. 2022, "Reasonable Effectiveness of Random Weighting", TMLR).
Every step draws z ~ N(0, I) over the run's tasks and weighs task i by K softmax(z)_i (the paper's softmax
of a normal draw, times the number of tasks K so the weights average 1 and the step keeps the scale of the
summed losses). The generator is seeded from the run's seed and checkpointed (a resumed run draws the same
weights)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtdnn.balancers import Base, Setup, softmax_weights


@dataclass
class Config:
    std: float = 1.0  # of the normal draw (1: the paper's)


def problems(config: Config, tasks: list[str]) -> list[str]:
    return [f"balancer.std: must be > 0, got {config.std}"] if config.std <= 0 else []


class RandomWeights(Base):
    def __init__(self, config: Config, setup: Setup):
        super().__init__(config, setup)
        self.generator = torch.Generator().manual_seed(setup.seed)

    def start_step(self, tasks: list[str]) -> None:
        z = (
            torch.randn(len(self.setup.tasks), generator=self.generator, dtype=torch.float64)
            * self.config.std
        )
        self.shown = dict(zip(self.setup.tasks, softmax_weights(z).tolist()))

    def weight(self, task: str) -> float:
        return self.shown[task]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


def build(config: Config, setup: Setup) -> RandomWeights:
    return RandomWeights(config, setup)
