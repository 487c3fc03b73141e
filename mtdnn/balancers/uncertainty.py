"""uncertainty: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla 2018, CVPR, eqs. 7 and 10).
Each task has a learned s_i = log sigma_i^2 and the run minimises

    sum_i  c_i exp(-s_i) L_i  +  s_i / 2,     c_i = 1/2 for a Gaussian likelihood (regression), 1 for a
                                             softmax likelihood (classification and every other kind)

(log sigma_i = s_i / 2). The network sees task i's loss times c_i exp(-s_i); s_i descends -c_i exp(-s_i)
L_i + 1/2, which is zero at exp(s_i) = 2 c_i L_i: a task whose loss stays high is weighted down. s starts
at 0 (sigma = 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtdnn import kinds
from mtdnn.balancers import Base, LearnedValues, Setup


@dataclass
class Config:
    lr: float = 0.025  # Adam rate of the log-variances (see LearnedValues)
    start: float = 0.0  # initial s_i


def problems(config: Config, tasks: list[str]) -> list[str]:
    return [f"balancer.lr: must be > 0, got {config.lr}"] if config.lr <= 0 else []


def objective(log_vars: torch.Tensor, losses: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Kendall et al.'s loss of the tasks given: sum c_i exp(-s_i) L_i + s_i / 2."""
    return (factors * torch.exp(-log_vars) * losses + log_vars / 2).sum()


class Uncertainty(Base):
    needs_losses = True

    def __init__(self, config: Config, setup: Setup):
        super().__init__(config, setup)
        self.log_vars = LearnedValues(setup.tasks, config.start, config.lr)
        self.factors = torch.tensor(
            [0.5 if kinds.of(spec).gaussian_likelihood else 1.0 for spec in setup.specs.values()],
            dtype=torch.float64,
        )
        self._refresh()

    def _refresh(self) -> None:
        values = (self.factors * torch.exp(-self.log_vars.values.detach())).tolist()
        self.shown = dict(zip(self.setup.tasks, values))

    def weight(self, task: str) -> float:
        return self.shown[task]

    def end_step(self, losses: dict[str, float]) -> None:
        at = self.log_vars.index(list(losses))
        s = self.log_vars.values.detach().clone().requires_grad_(True)
        observed = torch.tensor(list(losses.values()), dtype=torch.float64)
        objective(s[at], observed, self.factors[at]).backward()
        self.log_vars.step(s.grad)
        self._refresh()

    def state_dict(self) -> dict:
        return self.log_vars.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.log_vars.load_state_dict(state)
        self._refresh()

    def stats(self) -> dict[str, float]:
        return {
            **super().stats(),
            **{f"balancer_log_var/{t}": v for t, v in zip(self.setup.tasks, self.log_vars.values.tolist())},
        }


def build(config: Config, setup: Setup) -> Uncertainty:
    return Uncertainty(config, setup)
