"""gradnorm: gradient normalisation (Chen et al. 2018, ICML). Loss weights w_i (start 1, sum K) are trained
so that each task's gradient norm on the shared weights W tracks its relative training rate:

    G_i = ||grad_W w_i L_i||,  r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0)),
    L_grad = sum_i | G_i - mean_j(G_j) r_i^alpha |          (the target held constant, as the paper)

dL_grad/dw_i = sign(G_i - target_i) G_i / w_i (G_i is linear in w_i); w takes an Adam step on it and is
renormalised to sum K. alpha = 1.5 (LibMTL's default; the paper uses 0.12 to 3 by data set). The network
sees task i's loss times w_i. W is every parameter the step's tasks share, or the part `balancer.params`
names (the paper's choice: the last shared layer, e.g. balancer.params=[encoder.encoder.layer.5]); G_i
comes from the Gram matrix's diagonal. L_i(0) is each task's first observed loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtdnn.balancers import Base, LearnedValues, Setup

NEEDS_SEVERAL_TASKS = True


@dataclass
class Config:
    alpha: float = 1.5  # strength of the pull towards a common training rate
    lr: float = 0.025  # Adam rate of the weights (see LearnedValues)


def problems(config: Config, tasks: list[str]) -> list[str]:
    found = [f"balancer.alpha: must be >= 0, got {config.alpha}"] if config.alpha < 0 else []
    return found + ([f"balancer.lr: must be > 0, got {config.lr}"] if config.lr <= 0 else [])


def gradnorm_direction(
    norms: torch.Tensor, weights: torch.Tensor, loss_ratios: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL_grad/dw, the target norms) for the tasks given: G_i = norms, L_i / L_i(0) = loss_ratios."""
    rates = loss_ratios / loss_ratios.mean()
    targets = norms.mean() * rates**alpha
    return torch.sign(norms - targets) * norms / weights, targets


class GradNorm(Base):
    combines = True
    needs_losses = True

    def __init__(self, config: Config, setup: Setup):
        super().__init__(config, setup)
        self.weights = LearnedValues(setup.tasks, 1.0, config.lr)
        self.first_losses: dict[str, float] = {}
        self._refresh()

    def _refresh(self) -> None:
        self.shown = dict(zip(self.setup.tasks, self.weights.values.detach().tolist()))

    def weight(self, task: str) -> float:
        return self.shown[task]

    def combine(
        self, gram: torch.Tensor, tasks: list[str], losses: dict[str, float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for task in tasks:
            self.first_losses.setdefault(task, losses[task])
        at = self.weights.index(tasks)
        ratios = torch.tensor(
            [losses[t] / max(self.first_losses[t], 1e-12) for t in tasks], dtype=torch.float64
        )
        norms = gram.diagonal().double().clamp(min=0).sqrt()
        direction, _ = gradnorm_direction(norms, self.weights.values.detach()[at], ratios, self.config.alpha)
        full = torch.zeros(len(self.setup.tasks), dtype=torch.float64)
        full[at] = direction
        self.weights.step(full)
        with torch.no_grad():  # renormalise to sum K (a weight pushed to 0 or below is kept just above it)
            values = self.weights.values.clamp_(min=1e-3)
            values.mul_(len(values) / values.sum())
        ones = torch.ones(len(tasks), dtype=gram.dtype)
        # the weights already scaled this step's losses; the new ones apply from the next step
        return (
            ones,
            ones,
        )

    def end_step(self, losses: dict[str, float]) -> None:
        self._refresh()

    def state_dict(self) -> dict:
        return {**self.weights.state_dict(), "first_losses": dict(self.first_losses)}

    def load_state_dict(self, state: dict) -> None:
        self.weights.load_state_dict(state)
        self.first_losses = dict(state.get("first_losses", {}))
        self._refresh()


def build(config: Config, setup: Setup) -> GradNorm:
    return GradNorm(config, setup)
