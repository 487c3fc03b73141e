"""SMART: smoothness-inducing adversarial regularization + Bregman proximal point optimization
(Jiang et al. 2020, arXiv 1911.03437, Algorithm 1), for every head that defines `divergence`.

Per micro-batch, on top of the task loss L(f(x; theta), y):

  1. x is the word-embedding output (before position/type embeddings and LayerNorm); perturbed inputs are
     fed as `inputs_embeds`, so the encoder adds positions and applies LayerNorm exactly once. Start from
     delta ~ N(0, noise_std^2) on non-padding positions (padding gets no noise, ever).
  2. K ascent steps on D(f(x + delta), f(x)) with the clean output held fixed: the gradient w.r.t. delta
     alone (torch.autograd.grad: no weight gradients are computed), normalised per example in the chosen
     norm (inf | l2 | l1), a step of step_size, then projection onto the epsilon ball of that norm.
  3. Add lambda_s * D(f(x + delta), f(x)), with gradients into the weights through both outputs.
  4. Bregman proximal point: add mu * D(f(x; theta), f(x; theta_teacher)) on the clean input, where the teacher
     is an exponential moving average of the parameters (beta for the first beta_switch of training, then
     beta_late, as the paper does), run without a graph and updated after every optimizer step.

D is the head's own symmetric divergence: symmetric KL for classification (and, when they land, the
candidates of a ranking group, start/end distributions for spans, per-token distributions for tagging),
squared error for regression. Every perturbed and teacher pass replays the clean pass's dropout masks, so
D measures the input (or parameter) change and not two draws of dropout. The clean pass is never rerun:
its embeddings and logits come from the training step itself.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mtdnn.regularizers import Base, StepContext
from mtdnn.schema import build as build_dataclass

log = logging.getLogger(__name__)
NORMS = ("inf", "l2", "l1")


@dataclass
class Config:
    lambda_s: float = 1.0  # weight of the adversarial smoothness term (the paper searches {1, 3, 5}); 0 = off
    mu: float = 1.0  # weight of the proximal (momentum teacher) term; 0 = off, and no teacher is kept
    beta: float = 0.99  # teacher momentum for the first beta_switch of training ...
    beta_late: float = 0.999  # ... and after it
    beta_switch: float = 0.1
    steps: int = 1  # K: ascent steps on the perturbation
    step_size: float = 1e-3  # eta
    noise_std: float = 1e-5  # sigma of the initial perturbation
    epsilon: float = 1e-5  # radius of the perturbation ball
    norm: str = "inf"  # inf | l2 | l1
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-task overrides, e.g. {stsb: {lambda_s: 3}}


TEACHER_FIELDS = ("beta", "beta_late", "beta_switch")  # the teacher is shared, so these are run-wide


def _settings_problems(cfg: Config, where: str) -> list[str]:
    problems = []
    for name in ("lambda_s", "mu", "step_size", "noise_std", "epsilon"):
        if getattr(cfg, name) < 0:
            problems.append(f"{where}.{name}: must be >= 0, got {getattr(cfg, name)}")
    if cfg.steps < 1:
        problems.append(f"{where}.steps: must be >= 1, got {cfg.steps}")
    if cfg.norm not in NORMS:
        problems.append(f"{where}.norm: must be one of {', '.join(NORMS)}, got '{cfg.norm}'")
    for name in TEACHER_FIELDS:
        if not 0 <= getattr(cfg, name) <= 1:
            problems.append(f"{where}.{name}: must be in [0, 1], got {getattr(cfg, name)}")
    return problems


def task_settings(cfg: Config, task: str, problems: list[str] | None = None) -> Config:
    """The run-wide settings with this task's overrides applied."""
    override = dict(cfg.tasks.get(task, {}))
    sink = problems if problems is not None else []
    bad = [k for k in override if k in TEACHER_FIELDS or k == "tasks"]
    sink += [f"regularizer.smart.tasks.{task}.{k}: the teacher is shared by all tasks; set it run-wide"
             for k in bad]
    merged = {**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "tasks"},
              **{k: v for k, v in override.items() if k not in bad}}
    return build_dataclass(Config, merged, f"regularizer.smart.tasks.{task}", sink)


def problems(cfg: Config, specs: list) -> list[str]:
    found = _settings_problems(cfg, "regularizer.smart")
    names = [s.name for s in specs]
    for task in cfg.tasks:
        if task not in names:
            found.append(f"regularizer.smart.tasks.{task}: not a selected task")
            continue
        found += _settings_problems(task_settings(cfg, task, found), f"regularizer.smart.tasks.{task}")
    return found


# ---------------------------------------------------------------- the perturbation, per example

def per_example_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Norm of each example's whole perturbation (all positions and features), shaped to broadcast."""
    flat = x.flatten(1)
    if norm == "inf":
        value = flat.abs().amax(1)
    elif norm == "l2":
        value = flat.norm(dim=1)
    else:
        value = flat.abs().sum(1)
    return value.view(-1, *([1] * (x.dim() - 1)))


def normalize(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad / per_example_norm(grad, norm).clamp_min(1e-30)


def project(delta: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """Euclidean projection of each example's perturbation onto its epsilon ball in `norm`."""
    if norm == "inf":
        return delta.clamp(-epsilon, epsilon)
    if norm == "l2":
        return delta * (epsilon / per_example_norm(delta, "l2").clamp_min(epsilon))
    return _project_l1(delta, epsilon)


def _project_l1(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Duchi et al. 2008: soft-threshold |v| at the theta that lands exactly on the l1 sphere."""
    flat = delta.flatten(1)
    size = flat.abs()
    inside = size.sum(1, keepdim=True) <= epsilon
    ordered, _ = size.sort(1, descending=True)
    excess = ordered.cumsum(1) - epsilon
    ranks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    rho = ((ordered - excess / ranks) > 0).to(flat.dtype).mul(ranks).amax(1, keepdim=True)  # last positive rank
    theta = excess.gather(1, rho.long().clamp_min(1) - 1) / rho.clamp_min(1)
    shrunk = flat.sign() * (size - theta).clamp_min(0)
    return torch.where(inside, flat, shrunk).view_as(delta)


def ascent_step(delta: torch.Tensor, grad: torch.Tensor, cfg: Any) -> torch.Tensor:
    """delta <- Project_eps(delta + step_size * grad / ||grad||)."""
    return project(delta + cfg.step_size * normalize(grad, cfg.norm), cfg.epsilon, cfg.norm)


def adversarial_perturbation(ctx: StepContext, objective: Callable[[torch.Tensor], torch.Tensor],
                             cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """K ascent steps on objective(f(x + delta)) from delta ~ N(0, noise_std^2) on non-padding positions; the
    gradient is taken w.r.t. delta alone (no weight gradients). `cfg` has steps, step_size, noise_std, epsilon
    and norm (SMART's and ALICE's settings). Returns delta (zero if a gradient was NaN/inf) and that flag."""
    mask = ctx.batch["attention_mask"].unsqueeze(-1).to(ctx.embeds.dtype)
    base = ctx.embeds.detach()
    delta = torch.randn_like(base) * cfg.noise_std * mask
    finite = torch.ones((), dtype=torch.bool, device=base.device)
    for _ in range(cfg.steps):
        delta.requires_grad_(True)
        with ctx.dropout.replay():
            perturbed = ctx.model(ctx.task, **{**ctx.batch, "inputs_embeds": base + delta})
        (grad,) = torch.autograd.grad(objective(perturbed), delta)
        finite = finite & torch.isfinite(grad).all()
        delta = torch.where(finite, ascent_step(delta.detach(), grad * mask, cfg) * mask, torch.zeros_like(base))
    return delta, finite


def perturbed_logits(ctx: StepContext, delta: torch.Tensor) -> torch.Tensor:
    """f(x + delta) with gradients into the weights (and the embeddings), under the clean pass's dropout masks."""
    with ctx.dropout.replay():
        return ctx.model(ctx.task, **{**ctx.batch, "inputs_embeds": ctx.embeds + delta})


# ---------------------------------------------------------------- the regularizer

class Smart(Base):
    def __init__(self, cfg: Config, model: torch.nn.Module, specs: list):
        self.cfg = cfg
        self.settings = {s.name: task_settings(cfg, s.name) for s in specs}
        self.uses_teacher = any(s.mu > 0 for s in self.settings.values())
        self.teacher = _frozen_copy(model) if self.uses_teacher else None
        self.skipped = 0  # micro-batches whose adversarial term was dropped for NaN/inf
        self._warned_bf16 = False

    # 1-3: the smoothness-inducing adversarial term
    def _adversarial(self, ctx: StepContext, cfg: Config) -> torch.Tensor | None:
        head = ctx.model.head(ctx.task)
        clean = ctx.logits.detach()
        delta, finite = adversarial_perturbation(ctx, lambda out: head.divergence(out, clean, ctx.batch).sum(), cfg)
        term = head.divergence(perturbed_logits(ctx, delta), ctx.logits, ctx.batch).mean()
        if not bool(finite & torch.isfinite(term)):  # the one host sync: a NaN must never reach backward
            self.skipped += 1
            return None
        return term

    # 4: the Bregman proximal term against the momentum teacher
    def _proximal(self, ctx: StepContext) -> torch.Tensor:
        self.teacher.train(ctx.model.training)
        with torch.no_grad(), ctx.dropout.replay():
            target = self.teacher(ctx.task, **ctx.batch)
        return ctx.model.head(ctx.task).divergence(ctx.logits, target, ctx.batch).mean()

    def penalty(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        cfg = self.settings[ctx.task]
        self._warn_bf16_once(ctx, cfg)
        terms = {}
        if cfg.lambda_s > 0:
            adversarial = self._adversarial(ctx, cfg)
            if adversarial is not None:
                terms["smart_adv"] = cfg.lambda_s * adversarial
        if cfg.mu > 0:
            terms["smart_prox"] = cfg.mu * self._proximal(ctx)
        return terms

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, step: int, total_steps: int, lr: float) -> None:
        """teacher <- beta * teacher + (1 - beta) * model, every optimizer step."""
        if self.teacher is None:
            return
        beta = self.cfg.beta if step <= self.cfg.beta_switch * total_steps else self.cfg.beta_late
        teacher_params = list(self.teacher.parameters())
        torch._foreach_lerp_(teacher_params, list(model.parameters()), 1.0 - beta)
        for mine, theirs in zip(self.teacher.buffers(), model.buffers()):
            mine.copy_(theirs)

    def _warn_bf16_once(self, ctx: StepContext, cfg: Config) -> None:
        if self._warned_bf16 or not torch.is_autocast_enabled(ctx.embeds.device.type) or cfg.lambda_s == 0:
            return
        self._warned_bf16 = True
        if cfg.epsilon < 1e-3:
            log.warning("regularizer.smart: epsilon=%g is below bfloat16 resolution of the embeddings; under "
                        "trainer.bf16=true the adversarial term mostly measures rounding (use fp32 or a larger "
                        "epsilon)", cfg.epsilon)

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict() if self.teacher is not None else None, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        if self.teacher is not None and state.get("teacher") is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.skipped = int(state.get("skipped", 0))

    def stats(self) -> dict[str, float]:
        return {"smart_skipped": float(self.skipped)}


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(model)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def build(cfg: Config, model: torch.nn.Module, specs: list) -> Smart:
    return Smart(cfg, model, specs)
