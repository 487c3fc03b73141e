"""famo: fast adaptive multitask optimisation (Liu et al. 2023, NeurIPS, Algorithm 1 and the authors'
code). Task logits xi (start 0), z = softmax(xi). The step descends sum_i z_i log L_i, i.e. along

    sum_i  z_i / (c L_i)  grad L_i,      c = sum_j z_j / L_j

(times K here, so the step has the scale of the summed losses), which balances the tasks' *relative* loss
decrease. After the update the same batches are scored again (no gradient, an extra forward per task:
FAMO's cost), delta_i = log L_i - log L'_i, and xi takes an Adam step (lr 0.025, weight decay 1e-3, the
paper's) along d(z . delta)/d xi: tasks that improved least gain weight. With fewer tasks per step than
tasks, z is taken over the step's tasks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtdnn.balancers import Base, LearnedValues, Setup

NEEDS_SEVERAL_TASKS = True
FLOOR = 1e-8  # added to every loss before its log (the authors' code)


@dataclass
class Config:
    lr: float = 0.025  # Adam rate of the logits
    weight_decay: float = 1.0e-3  # gamma


def problems(config: Config, tasks: list[str]) -> list[str]:
    found = [f"balancer.lr: must be > 0, got {config.lr}"] if config.lr <= 0 else []
    return found + (
        [f"balancer.weight_decay: must be >= 0, got {config.weight_decay}"] if config.weight_decay < 0 else []
    )


def famo_coefficients(logits: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """K z_i / (c L_i): the gradient of sum_i z_i log L_i, normalised by c = sum_j z_j / L_j."""
    z = torch.softmax(logits, dim=0)
    inverse = z / (losses + FLOOR)
    return len(logits) * inverse / inverse.sum()


def logit_direction(logits: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """d(softmax(xi) . delta)/d xi with delta = log L - log L' (the vector-Jacobian product of the
    softmax)."""
    delta = torch.log(before + FLOOR) - torch.log(after + FLOOR)
    z = torch.softmax(logits, dim=0)
    return z * (delta - (z * delta).sum())


class FAMO(Base):
    combines = True
    needs_losses = True
    needs_losses_after_step = True

    def __init__(self, config: Config, setup: Setup):
        super().__init__(config, setup)
        self.logits = LearnedValues(setup.tasks, 0.0, config.lr, config.weight_decay)
        self.before: dict[str, float] = {}

    def combine(
        self, gram: torch.Tensor, tasks: list[str], losses: dict[str, float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.before = {t: losses[t] for t in tasks}
        at = self.logits.index(tasks)
        observed = torch.tensor([losses[t] for t in tasks], dtype=torch.float64)
        coefficients = famo_coefficients(self.logits.values.detach()[at], observed).to(gram.dtype)
        self.shown = dict(zip(tasks, coefficients.tolist()))
        return coefficients, coefficients

    def after_step_losses(self, losses: dict[str, float]) -> None:
        tasks = list(self.before)
        at = self.logits.index(tasks)
        before = torch.tensor([self.before[t] for t in tasks], dtype=torch.float64)
        after = torch.tensor([losses[t] for t in tasks], dtype=torch.float64)
        full = torch.zeros(len(self.setup.tasks), dtype=torch.float64)
        full[at] = logit_direction(self.logits.values.detach()[at], before, after)
        self.logits.step(full)

    def state_dict(self) -> dict:
        return self.logits.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.logits.load_state_dict(state)

    def stats(self) -> dict[str, float]:
        return {
            **super().stats(),
            **{f"balancer_logit/{t}": v for t, v in zip(self.setup.tasks, self.logits.values.tolist())},
        }


def build(config: Config, setup: Setup) -> FAMO:
    return FAMO(config, setup)
