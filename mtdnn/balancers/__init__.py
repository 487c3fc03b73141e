"""Balancers: how the tasks' losses or gradients become one update. One module per method in this package
plus one YAML in conf/balancer/, no central list (like the regularizers); `balancer=pcgrad`,
`balancer.alpha=0.4`.

A module `mtdnn/balancers/<name>.py` provides
    Config                      a dataclass of its knobs (validated like task files: every problem at once)
    build(config, setup)        -> a `Balancer` (subclass `Base` and override what the method needs)
and `conf/balancer/<name>.yaml` holds `name: <name>` and the method's settings.

A balancer acts at three points of an optimizer step:
    weight(task)                a multiplier on the task's loss, known before its backward (loss weighting)
    combine(gram, tasks, losses) with `trainer.tasks_per_step >= 2`: each task's gradient of the parameters
                                the step's tasks share, given as their Gram matrix (g_i . g_j), becomes
                                sum_i shared[i] g_i; a parameter only one task reached gets private[i] g_i
    end_step(losses)            after the optimizer step, with each task's loss of this step (learned weights)

Every method here returns a linear combination of the task gradients, so the loop never concatenates them:
it keeps each task's gradient where backward left it, computes the Gram matrix parameter by parameter, and
writes the combination back (memory: one gradient per task of the step, i.e. (K - 1) x the balanced
parameters beyond single-task training; `balancer.params` narrows the balanced part, the rest is summed).

May import: core, kinds, data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mtdnn.core import plugins
from mtdnn.core.errors import MtdnnError, raise_if
from mtdnn.core.typed import build as build_dataclass
from mtdnn.core.typed import suggest


@dataclass
class Setup:
    """What a balancer is built with: the run's tasks and how long the run is."""

    specs: dict[str, Any]  # task name -> TaskSpec, in the run's order
    steps_per_epoch: float  # optimizer steps in one pass over every task's train split
    total_steps: int
    seed: int

    @property
    def tasks(self) -> list[str]:
        return list(self.specs)


class Balancer(Protocol):
    combines: bool
    needs_losses: bool
    needs_losses_after_step: bool
    patterns: tuple[str, ...]

    def start_step(self, tasks: list[str]) -> None: ...

    def weight(self, task: str) -> float: ...

    def combine(
        self, gram: torch.Tensor, tasks: list[str], losses: dict[str, float]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def end_step(self, losses: dict[str, float]) -> None: ...

    def after_step_losses(self, losses: dict[str, float]) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def stats(self) -> dict[str, float]: ...


class Base:
    """Equal weights, gradients summed: training as without a balancer. A method overrides what it changes."""

    # True: combine() is called (it needs trainer.tasks_per_step >= 2: see NEEDS_SEVERAL_TASKS)
    combines = False
    needs_losses = False  # True: end_step/combine read each task's loss of the step (one host sync per step)
    needs_losses_after_step = False  # True: the step's batches are re-scored after the update (FAMO)
    patterns: tuple[str, ...] = ()  # balancer.params: the parameters combine() balances ([]: all)

    def __init__(self, config: Any, setup: Setup):
        self.config, self.setup = config, setup
        self.shown: dict[str, float] = {}  # the weights of the last step, for the logs

    def start_step(self, tasks: list[str]) -> None:
        return None

    def weight(self, task: str) -> float:
        return 1.0

    def combine(
        self, gram: torch.Tensor, tasks: list[str], losses: dict[str, float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ones = torch.ones(len(tasks), dtype=gram.dtype)
        return ones, ones

    def end_step(self, losses: dict[str, float]) -> None:
        return None

    def after_step_losses(self, losses: dict[str, float]) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def stats(self) -> dict[str, float]:
        return {f"balancer_weight/{task}": value for task, value in self.shown.items()}


def available() -> list[str]:
    return list(plugins.names(__name__, "build"))


def _module(name: str):
    return plugins.load(__name__, "build", name)


@dataclass
class Common:
    """Settings every balancer has besides its own."""

    name: str = "none"
    params: list[str] = field(default_factory=list)  # with tasks_per_step >= 2: balance only parameters whose
    # name contains one of these (e.g. [encoder.encoder.layer.5]); the rest get the plain sum. []: all


def _split(node: dict[str, Any]) -> tuple[dict, dict]:
    common = {k: v for k, v in node.items() if k in ("name", "params")}
    return common, {k: v for k, v in node.items() if k not in common}


def balancer_problems(node: dict[str, Any], tasks: list[str], tasks_per_step: int) -> list[str]:
    """Validate the balancer's settings before any data or weights are loaded."""
    node = dict(node or {})
    name = str(node.get("name", "none"))
    if name not in available():
        return [
            f"balancer.name: unknown balancer '{name}'{suggest(name, available())}; "
            f"available: {', '.join(available())}"
        ]
    problems: list[str] = []
    common, own = _split(node)
    build_dataclass(Common, common, "balancer", problems)
    module = _module(name)
    config = build_dataclass(module.Config, own, "balancer", problems)
    if common.get("params") and not getattr(module, "NEEDS_SEVERAL_TASKS", False):
        problems.append(
            f"balancer.params: balancer={name} weighs losses and reads no gradients; only the "
            "gradient balancers (gradnorm, pcgrad, cagrad, famo) use it"
        )
    if getattr(module, "NEEDS_SEVERAL_TASKS", False) and tasks_per_step < 2:
        problems.append(
            f"balancer={name}: needs several tasks in one step; set trainer.tasks_per_step=2 or "
            f"more (up to the {len(tasks)} selected tasks)"
        )
    if not problems and hasattr(module, "problems"):
        problems += module.problems(config, tasks)
    return problems


def build_balancer(node: dict[str, Any], setup: Setup) -> Balancer:
    node = dict(node or {})
    problems: list[str] = []
    common, own = _split(node)
    module = _module(str(node.get("name", "none")))
    config = build_dataclass(module.Config, own, "balancer", problems)
    raise_if(problems, "the balancer configuration has problems")
    built = module.build(config, setup)
    built.patterns = tuple(common.get("params") or ())
    return built


def balanced_parameter(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return not patterns or any(p in name for p in patterns)


def softmax_weights(logits: torch.Tensor) -> torch.Tensor:
    """K * softmax: weights that average 1, so the update has the scale of the plain sum of the task
    losses."""
    return len(logits) * torch.softmax(logits, dim=0)


class LearnedValues:
    """One learned number per task with its own Adam (uncertainty's log-variances, GradNorm's weights,
    FAMO's logits). Why its own optimizer: the papers train these with the network's, but a fine-tuning
    run's encoder rate (5e-5) would leave them where they start; each method's `lr` sets theirs (FAMO's
    paper: 0.025)."""

    def __init__(self, tasks: list[str], start: float, lr: float, weight_decay: float = 0.0):
        self.tasks = list(tasks)
        self.values = torch.full((len(tasks),), float(start), dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.values], lr=lr, weight_decay=weight_decay)

    def index(self, tasks: list[str]) -> torch.Tensor:
        return torch.tensor([self.tasks.index(t) for t in tasks])

    def step(self, gradient: torch.Tensor) -> None:
        """One Adam step along `gradient` (a given direction: the methods compute theirs in closed form)."""
        self.optimizer.zero_grad(set_to_none=False)
        self.values.grad = gradient.detach().to(self.values.dtype).clone()
        self.optimizer.step()

    def state_dict(self) -> dict:
        return {"values": self.values.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "values" in state:
            with torch.no_grad():
                self.values.copy_(state["values"])
            self.optimizer.load_state_dict(state["optimizer"])


class TaskGradients:
    """Each task's gradient of the balanced parameters, kept apart between the backward passes of a
    multi-task step, then replaced by the balancer's combination. Parameters outside `patterns` accumulate
    as usual (their gradients are summed over the step's tasks)."""

    def __init__(
        self, named_params: list[tuple[str, torch.nn.Parameter]], patterns: tuple[str, ...] | list[str]
    ):
        self.params = [p for n, p in named_params if balanced_parameter(n, patterns)]
        self.others = [p for n, p in named_params if not balanced_parameter(n, patterns)]
        self.per_task: list[list[torch.Tensor | None]] = []
        if not self.params:  # balancing nothing would silently be training without the balancer
            raise MtdnnError(
                f"balancer.params: {list(patterns)} names no trainable parameter (a parameter is balanced "
                "when one of them is part of its name, e.g. encoder.encoder.layer.11)"
            )

    def take(self) -> None:
        """After one task's backward: move its gradients out of .grad (no copy)."""
        self.per_task.append([p.grad for p in self.params])
        for p in self.params:
            p.grad = None

    def gram(self) -> tuple[torch.Tensor, list[bool]]:
        """g_i . g_j over the parameters two or more tasks reached, and which parameters those are."""
        k = len(self.per_task)
        gram: torch.Tensor | float = 0.0  # summed on the gradients' device; one copy to the host at the end
        shared = []
        for column in zip(*self.per_task):
            present = [g for g in column if g is not None]
            shared.append(len(present) >= 2)
            if shared[-1]:
                # bf16 gradients: dot products in fp32
                dtype = torch.promote_types(present[0].dtype, torch.float32)
                flat = torch.stack(
                    [
                        (g if g is not None else torch.zeros_like(present[0])).reshape(-1).to(dtype)
                        for g in column
                    ]
                )
                gram = gram + (flat @ flat.T).double()
        if not isinstance(gram, torch.Tensor):
            return torch.zeros(k, k, dtype=torch.float64), shared
        return gram.cpu(), shared

    def combine(self, balancer: Balancer, tasks: list[str], losses: dict[str, float]) -> None:
        """Write sum_i coef_i g_i back into .grad (shared coefficients where several tasks reached a
        parameter, private ones where one did)."""
        gram, shared = self.gram()
        shared_coefs, private_coefs = balancer.combine(gram, tasks, losses)
        for param, column, is_shared in zip(self.params, zip(*self.per_task), shared):
            coefs = (shared_coefs if is_shared else private_coefs).tolist()
            total = None
            for coef, grad in zip(coefs, column):  # in place: the stored gradients are this step's own
                if grad is not None:
                    total = grad.mul_(coef) if total is None else total.add_(grad, alpha=coef)
            param.grad = total
        self.per_task = []
