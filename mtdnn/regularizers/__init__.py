"""Regularizers: one module per method in this package plus one YAML in conf/regularizer/, no central list.

A module `mtdnn/regularizers/<name>.py` provides
    Config                      a dataclass of its knobs (validated like task files: every problem at once)
    problems(config, specs)     extra checks that need the selected tasks (optional)
    CHANGES_MODEL = True        if build() reparametrizes the model (built before the others, which may
                                copy it)
    build(config, model, specs) -> a `Regularizer` (subclass `Base` and override what the method needs):
        penalty(ctx) -> dict[str, Tensor]   weighted loss terms for one micro-batch (added to the task loss);
                                            a detached term is only logged (the method did its own backward)
        prepare(model, batches, device)     once before the first step of a fresh run (e.g. a Fisher pass)
        before_step(model)                  after clipping, before the optimizer step (e.g. gradient masks)
        after_step(model, step, total_steps, lr)   after every optimizer step (lr: the encoder's)
        state_dict() / load_state_dict()    checkpointed with the run
        stats() -> dict[str, float]         counters for the logs
        task_loss_weight, needs_hidden_states, replays_dropout   how the clean pass is used

and `conf/regularizer/<name>.yaml` nests its settings under its own name, so several compose:
`regularizer=smart`, `regularizer=[smart,child_tuning]`, `regularizer.smart.lambda_s=3`.

May import: core, kinds, data, model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mtdnn.core import plugins
from mtdnn.core.errors import raise_if
from mtdnn.core.typed import build as build_dataclass
from mtdnn.core.typed import suggest
from mtdnn.regularizers.dropout import DropoutReplay

log = logging.getLogger(__name__)


class Regularizer(Protocol):
    task_loss_weight: float
    needs_hidden_states: bool
    replays_dropout: bool

    def penalty(self, ctx: StepContext) -> dict[str, torch.Tensor]: ...

    def prepare(
        self, model: torch.nn.Module, batches: Iterable[tuple[str, dict]], device: torch.device
    ) -> None: ...

    def before_step(self, model: torch.nn.Module) -> None: ...

    def after_step(self, model: torch.nn.Module, step: int, total_steps: int, lr: float) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def stats(self) -> dict[str, float]: ...


class Base:
    """Does nothing at every hook; a method overrides the ones it needs."""

    task_loss_weight = 1.0  # 0: the method's own passes replace the clean task loss (FreeLB)
    needs_hidden_states = False  # True: the clean pass also returns every layer's hidden states
    replays_dropout = False  # True: later passes reuse the clean pass's dropout masks (ctx.dropout.replay())

    def penalty(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {}

    def prepare(
        self, model: torch.nn.Module, batches: Iterable[tuple[str, dict]], device: torch.device
    ) -> None:
        return None

    def before_step(self, model: torch.nn.Module) -> None:
        return None

    def after_step(self, model: torch.nn.Module, step: int, total_steps: int, lr: float) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def stats(self) -> dict[str, float]:
        return {}


class CountsSkips(Base):
    """For methods that drop a micro-batch's term on NaN/inf: the count is checkpointed and logged."""

    skip_label = ""  # logged as <skip_label>_skipped
    skipped = 0

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped", 0))

    def stats(self) -> dict[str, float]:
        return {f"{self.skip_label}_skipped": float(self.skipped)}


class TermActivity:
    """Says, once, when a regularizer's term is too small to change training (a knob that silently does
    nothing), and logs the term's size relative to the task loss (`<name>_to_loss`, over each log window)."""

    THRESHOLD = 1e-3  # below this fraction of the task loss a term is numerically irrelevant
    AFTER = 50  # micro-batches before judging: terms start small while the head is still unsure

    def __init__(self, where: str, name: str):
        self.where, self.name = where, name
        self.term_sum, self.loss_sum, self.count, self.seen = 0.0, 0.0, 0, 0
        self.peak = 0.0  # the largest window ratio so far: the warning is for a term that *stays* small
        self.warned = False

    def add(self, term: torch.Tensor, ctx: StepContext) -> None:
        loss = ctx.loss if ctx.loss is not None else ctx.loss_of(ctx.logits) if ctx.loss_of else None
        if loss is None:
            return
        self.term_sum = self.term_sum + term.detach().float()  # stays on the device until stats()
        self.loss_sum = self.loss_sum + loss.detach().float().abs()
        self.count += 1

    def stats(self) -> dict[str, float]:
        if not self.count:
            return {}
        ratio = float(self.term_sum) / max(float(self.loss_sum), 1e-12)
        self.seen += self.count
        self.peak = max(self.peak, ratio)
        if self.seen >= self.AFTER and self.peak < self.THRESHOLD and not self.warned:
            self.warned = True
            log.warning(
                "%s: the %s term has stayed below %.0e of the task loss (now %.1e) for %d micro-batches: "
                "too small to change training (raise epsilon, or its weight)",
                self.where,
                self.name,
                self.THRESHOLD,
                ratio,
                self.seen,
            )
        self.term_sum, self.loss_sum, self.count = 0.0, 0.0, 0
        return {f"{self.name}_to_loss": ratio}


@dataclass
class StepContext:
    """What a regularizer sees of one micro-batch: the clean pass's inputs and outputs, nothing recomputed."""

    model: Any  # MultiTaskModel
    task: str
    batch: dict[str, torch.Tensor]
    embeds: torch.Tensor  # word embeddings fed to the clean pass (graph attached)
    logits: torch.Tensor  # clean logits (graph attached)
    dropout: DropoutReplay | None  # replay() gives a later pass the clean pass's masks (if replays_dropout)
    loss_of: Any = None  # logits -> the training loss of this batch (the task loss, or the distillation loss)
    scale: float = 1.0  # what the loop multiplies the loss by before backward (loss weight / grad_accum)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings output + each layer's, if asked for
    loss: torch.Tensor | None = None  # loss_of(logits), the clean pass's training loss (graph attached)


def available() -> list[str]:
    return list(plugins.names(__name__, "build"))


def _module(name: str):
    return plugins.load(__name__, "build", name)


def regularizer_problems(cfg: dict[str, Any], specs: list) -> list[str]:
    """Validate every selected regularizer's settings before any data or weights are loaded."""
    problems: list[str] = []
    for name, node in (cfg or {}).items():
        if name not in available():
            problems.append(
                f"regularizer.{name}: unknown regularizer{suggest(name, available())}; "
                f"available: {', '.join(available())}"
            )
            continue
        module = _module(name)
        config = build_dataclass(module.Config, node, f"regularizer.{name}", problems)
        if hasattr(module, "problems"):
            problems += module.problems(config, specs)
    return problems


def build_regularizers(cfg: dict[str, Any], model: torch.nn.Module, specs: list) -> dict[str, Regularizer]:
    """Methods that reparametrize the model are built first, so that copies others make (SMART's teacher)
    have the same structure."""
    problems: list[str] = []
    built = {}
    for name in sorted(cfg or {}, key=lambda n: not getattr(_module(n), "CHANGES_MODEL", False)):
        module = _module(name)
        built[name] = module.build(
            build_dataclass(module.Config, cfg[name], f"regularizer.{name}", problems), model, specs
        )
    raise_if(problems, "the regularizer configuration has problems")
    return built
