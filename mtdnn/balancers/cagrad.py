"""cagrad: conflict-averse gradient descent (Liu et al. 2021, NeurIPS, Algorithm 1 and the authors' code).
With g_0 the mean task gradient, find weights w on the simplex minimising

    g_w . g_0 + sqrt(phi) ||g_w||,       g_w = sum_i w_i g_i,   phi = c^2 ||g_0||^2

and step along d = (g_0 + sqrt(phi) / ||g_w|| g_w) / (1 + c^2) (the authors' rescaling), times K so the
step has the scale of the summed gradients, like the other balancers. c = 0.5 (the paper's default).
Everything is a function of the Gram matrix G (g_w . g_0 = w^T G 1/K, ||g_w||^2 = w^T G w), so the
K-variable problem is solved with scipy's SLSQP. Parameters only one task reaches (its head) keep that
task's gradient."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize

from mtdnn.balancers import Base, Setup

NEEDS_SEVERAL_TASKS = True


@dataclass
class Config:
    c: float = 0.5  # the radius of the ball around g_0, relative to ||g_0||; 0 is the mean gradient


def problems(config: Config, tasks: list[str]) -> list[str]:
    return [f"balancer.c: must be >= 0, got {config.c}"] if config.c < 0 else []


def objective(w: np.ndarray, gram: np.ndarray, c: float) -> float:
    """g_w . g_0 + c ||g_0|| ||g_w|| for weights w."""
    k = len(gram)
    mean = np.full(k, 1.0 / k)
    g0_norm = np.sqrt(max(mean @ gram @ mean, 0.0))
    return float(w @ gram @ mean + c * g0_norm * np.sqrt(max(w @ gram @ w, 0.0) + 1e-12))


def cagrad_coefficients(gram: torch.Tensor, c: float) -> tuple[torch.Tensor, np.ndarray]:
    """d = sum_i coef_i g_i (times K, see above) and the simplex weights w that define it."""
    k = len(gram)
    g = gram.double().numpy()
    start = np.full(k, 1.0 / k)
    found = minimize(
        objective,
        start,
        args=(g, c),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum()},),
    )
    w = np.clip(found.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else start
    g0_norm = np.sqrt(max(start @ g @ start, 0.0))
    gw_norm = np.sqrt(max(w @ g @ w, 0.0))
    reach = c * g0_norm / (gw_norm + 1e-12)
    coefficients = (start + reach * w) / (1 + c**2) * k
    return torch.tensor(coefficients, dtype=gram.dtype), w


class CAGrad(Base):
    combines = True

    def combine(
        self, gram: torch.Tensor, tasks: list[str], losses: dict[str, float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shared, _ = cagrad_coefficients(gram, self.config.c)
        self.shown = dict(zip(tasks, shared.tolist()))
        return shared, torch.ones(len(tasks), dtype=gram.dtype)


def build(config: Config, setup: Setup) -> CAGrad:
    return CAGrad(config, setup)
