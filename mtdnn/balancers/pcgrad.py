"""pcgrad: projecting conflicting gradients (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning",
NeurIPS, Algorithm 1). For each task i, starting from g_i^PC = g_i, for every other task j in random order:

    if g_i^PC . g_j < 0:   g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2  g_j

and the update is sum_i g_i^PC. Each g_i^PC is a combination sum_k A_ik g_k, so the projections run on the
Gram matrix alone (g_i^PC . g_j = sum_k A_ik g_k . g_j). Parameters only one task reaches (its head) keep
that task's gradient. The order generator is seeded from the run's seed and checkpointed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtdnn.balancers import Base, Setup

NEEDS_SEVERAL_TASKS = True


@dataclass
class Config:
    pass


def projection_coefficients(gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """A with g_i^PC = sum_k A[i, k] g_k; orders[i]: the other tasks in the order task i meets them."""
    coefficients = torch.eye(len(gram), dtype=gram.dtype)
    for i, order in enumerate(orders):
        for j in order:
            dot = coefficients[i] @ gram[:, j]
            if dot < 0 and gram[j, j] > 0:
                coefficients[i, j] -= dot / gram[j, j]
    return coefficients


class PCGrad(Base):
    combines = True

    def __init__(self, config: Config, setup: Setup):
        super().__init__(config, setup)
        self.generator = torch.Generator().manual_seed(setup.seed)
        self.conflicts = 0.0

    def combine(
        self, gram: torch.Tensor, tasks: list[str], losses: dict[str, float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(tasks)
        orders = []
        for i in range(k):
            others = [j for j in torch.randperm(k, generator=self.generator).tolist() if j != i]
            orders.append(others)
        shared = projection_coefficients(gram, orders).sum(0)
        off_diagonal = gram[~torch.eye(k, dtype=torch.bool)]
        self.conflicts = float((off_diagonal < 0).double().mean())
        self.shown = dict(zip(tasks, shared.tolist()))
        return shared, torch.ones(k, dtype=gram.dtype)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "pcgrad_conflicts": self.conflicts}


def build(config: Config, setup: Setup) -> PCGrad:
    return PCGrad(config, setup)
