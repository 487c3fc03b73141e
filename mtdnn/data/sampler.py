"""Which task each batch comes from. Every schedule is a probability vector over tasks, drawn from with a
seeded generator whose state is checkpointed, so a run and its resumed twin draw the same tasks."""

from __future__ import annotations

import numpy as np

from mtdnn.core.config import SamplerConfig
from mtdnn.core.typed import suggest

SAMPLERS = ("proportional", "temperature", "uniform", "annealed")


def sampler_problems(cfg: SamplerConfig, tasks: list[str]) -> list[str]:
    problems = []
    if cfg.name not in SAMPLERS:
        problems.append(
            f"sampler.name: unknown sampler '{cfg.name}'{suggest(cfg.name, SAMPLERS)}; "
            f"choose one of {', '.join(SAMPLERS)}"
        )
    if cfg.temperature <= 0:
        problems.append(f"sampler.temperature: must be > 0, got {cfg.temperature}")
    if not 0 <= cfg.end_alpha <= 1:
        problems.append(f"sampler.end_alpha: must be in [0, 1], got {cfg.end_alpha}")
    for task, weight in cfg.weights.items():
        if task not in tasks:
            problems.append(f"sampler.weights.{task}: not a selected task{suggest(task, tasks)}")
        elif weight < 0:
            problems.append(f"sampler.weights.{task}: must be >= 0, got {weight}")
    if tasks and all(cfg.weights.get(t, 1.0) == 0 for t in tasks):
        problems.append("sampler.weights: every task has weight 0")
    return problems


def size_exponent(cfg: SamplerConfig, progress: float) -> float:
    """p_i ~ n_i ** exponent: 1 proportional, 1/T temperature, 0 uniform, annealed moves 1 -> end_alpha."""
    if cfg.name == "proportional":
        return 1.0
    if cfg.name == "temperature":
        return 1.0 / cfg.temperature
    if cfg.name == "uniform":
        return 0.0
    return 1.0 - (1.0 - cfg.end_alpha) * min(max(progress, 0.0), 1.0)


def task_probabilities(cfg: SamplerConfig, sizes: dict[str, int], progress: float = 0.0) -> dict[str, float]:
    names = list(sizes)
    n = np.array([sizes[t] for t in names], dtype=np.float64)
    p = n ** size_exponent(cfg, progress) * np.array([cfg.weights.get(t, 1.0) for t in names])
    return dict(zip(names, (p / p.sum()).tolist()))


class TaskSampler:
    """Draws one task per micro-batch. `total_draws` fixes the annealing clock to the planned run length."""

    def __init__(self, cfg: SamplerConfig, sizes: dict[str, int], total_draws: int, seed: int):
        self.cfg = cfg
        self.sizes = dict(sizes)
        self.names = list(sizes)
        self.total_draws = max(1, total_draws)
        self.draws = 0
        self.rng = np.random.default_rng(seed)
        self._fixed = None if cfg.name == "annealed" else self._vector(0.0)

    def _vector(self, progress: float) -> np.ndarray:
        probs = task_probabilities(self.cfg, self.sizes, progress)
        return np.array([probs[t] for t in self.names])

    def next(self) -> str:
        p = self._fixed if self._fixed is not None else self._vector(self.draws / self.total_draws)
        self.draws += 1
        if len(self.names) == 1:
            return self.names[0]
        return self.names[int(self.rng.choice(len(self.names), p=p))]

    def next_distinct(self, k: int) -> list[str]:
        """k different tasks for one multi-task step (trainer.tasks_per_step), drawn without replacement by
        the schedule's probabilities, in the run's task order; all of them when k covers every task."""
        if k >= len(self.names):
            self.draws += len(self.names)
            return list(self.names)
        p = self._fixed if self._fixed is not None else self._vector(self.draws / self.total_draws)
        self.draws += k
        picked = self.rng.choice(len(self.names), size=k, replace=False, p=p)
        return [self.names[i] for i in sorted(int(i) for i in picked)]

    def state_dict(self) -> dict:
        return {"draws": self.draws, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.draws = int(state["draws"])
        self.rng.bit_generator.state = state["rng"]
