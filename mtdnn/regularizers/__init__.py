"""Regularizers: one module per method in this package plus one YAML in conf/regularizer/, no central list.

A module `mtdnn/regularizers/<name>.py` provides
    Config                      a dataclass of its knobs (validated like task files: every problem at once)
    problems(config, specs)     extra checks that need the selected tasks (optional)
    build(config, model, specs) -> an object with
        penalty(ctx) -> dict[str, Tensor]   weighted loss terms for one micro-batch (added to the task loss)
        after_step(model, step, total_steps) called after every optimizer step
        state_dict() / load_state_dict()    checkpointed with the run
        stats() -> dict[str, float]         counters for the logs

and `conf/regularizer/<name>.yaml` nests its settings under its own name, so several compose:
`regularizer=smart`, `regularizer=[smart,other]`, `regularizer.smart.lambda_s=3`.
"""

from __future__ import annotations

import importlib
import pkgutil
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mtdnn.errors import raise_if
from mtdnn.schema import build as build_dataclass
from mtdnn.schema import suggest


class Regularizer(Protocol):
    def penalty(self, ctx: "StepContext") -> dict[str, torch.Tensor]: ...

    def after_step(self, model: torch.nn.Module, step: int, total_steps: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def stats(self) -> dict[str, float]: ...


@dataclass
class StepContext:
    """What a regularizer sees of one micro-batch: the clean pass's inputs and outputs, nothing recomputed."""

    model: Any  # MultiTaskModel
    task: str
    batch: dict[str, torch.Tensor]
    embeds: torch.Tensor  # word embeddings fed to the clean pass (graph attached)
    logits: torch.Tensor  # clean logits (graph attached)
    dropout_rng: "RngSnapshot"  # replay to give perturbed passes the clean pass's dropout masks


class RngSnapshot:
    """The RNG state before the clean forward. Replaying it makes a second forward draw the same dropout
    masks, so a divergence between two passes measures the input change, not dropout noise."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self):
        cpu_now = torch.get_rng_state()
        cuda_now = torch.cuda.get_rng_state(self.device) if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:  # the main stream continues as if the replayed pass never drew anything
            torch.set_rng_state(cpu_now)
            if cuda_now is not None:
                torch.cuda.set_rng_state(cuda_now, self.device)


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def regularizer_problems(cfg: dict[str, Any], specs: list) -> list[str]:
    """Validate every selected regularizer's settings before any data or weights are loaded."""
    problems: list[str] = []
    for name, node in (cfg or {}).items():
        if name not in available():
            problems.append(f"regularizer.{name}: unknown regularizer{suggest(name, available())}; "
                            f"available: {', '.join(available())}")
            continue
        module = _module(name)
        config = build_dataclass(module.Config, node, f"regularizer.{name}", problems)
        if hasattr(module, "problems"):
            problems += module.problems(config, specs)
    return problems


def build_regularizers(cfg: dict[str, Any], model: torch.nn.Module, specs: list) -> dict[str, Regularizer]:
    problems: list[str] = []
    built = {}
    for name, node in (cfg or {}).items():
        module = _module(name)
        built[name] = module.build(build_dataclass(module.Config, node, f"regularizer.{name}", problems), model, specs)
    raise_if(problems, "the regularizer configuration has problems")
    return built
