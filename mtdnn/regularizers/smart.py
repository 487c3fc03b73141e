"""SMART: smoothness-inducing adversarial regularization + Bregman proximal point optimization (Jiang et
al. 2020, arXiv 1911.03437, Algorithm 1), for every head that defines `divergence`.

Per micro-batch, on top of the task loss L(f(x; theta), y):

  1. x is the word-embedding output (before position/type embeddings and LayerNorm); perturbed inputs are
     fed as `inputs_embeds`, so the encoder adds positions and applies LayerNorm exactly once. Start from
     delta ~ N(0, noise_std^2) on non-padding positions (padding gets no noise, ever).
  2. K ascent steps on D(f(x + delta), f(x)) with the clean output held fixed: the gradient w.r.t. delta
     alone (torch.autograd.grad: no weight gradients are computed), normalised in the chosen norm
     (inf | l2 | l1), a step of step_size, then projection onto the epsilon ball of that norm.
     `scale` says what the three sizes (noise_std, step_size, epsilon) are measured against:
       token      (default) fractions of each token's own embedding size in that norm, one ball per token
                  (noise_std: of the token's RMS). Word embeddings are small (MiniLM: element std 0.056),
                  so sizes only mean something relative to them.
       absolute   the paper's numbers read literally, one ball per example (all positions and features).
                  On a BERT-style word embedding, epsilon = 1e-5 moves the output by ~1e-6 of the loss.
       reference  mt-dnn's perturbation.py normalisation: each token's (delta + step_size * raw gradient)
                  rescaled onto its sphere, radius epsilon times the token's size (mt-dnn uses radius 1 on the
                  post-LayerNorm embedding output, whose MiniLM tokens have l_inf ~2.6: epsilon ~0.4 here).
  3. Add lambda_s * D(f(x + delta), f(x)), with gradients into the weights through both outputs.
  4. Bregman proximal point: add mu * D(f(x; theta), f(x; theta_teacher)) on the clean input, where the
     teacher is an exponential moving average of the parameters, run without a graph and updated after
     every optimizer step. Its memory fits the run: beta = 1 - 1 / (teacher_memory * total_steps), so the
     teacher averages over the last teacher_memory of the run. The paper's beta 0.99 then 0.999 (after
     beta_switch of training) remembers ~1,000 steps, longer than a low-resource run: it holds the student at
     its starting point. teacher_memory: null keeps the paper's schedule.

D is the head's own symmetric divergence: symmetric KL for classification (and, when they land, the
candidates of a ranking group, start/end distributions for spans, per-token distributions for tagging),
squared error for regression. Every perturbed and teacher pass replays the clean pass's dropout masks, so D
measures the input (or parameter) change and not two draws of dropout. The clean pass is never rerun: its
embeddings and logits come from the training step itself.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from mtdnn.core.typed import build as build_dataclass
from mtdnn.regularizers import Base, StepContext, TermActivity
from mtdnn.regularizers.perturbation import NORMS, SCALES, adversarial_perturbation, perturbed_logits

log = logging.getLogger(__name__)


@dataclass
class Config:
    lambda_s: float = 1.0  # weight of the adversarial smoothness term (the paper searches {1, 3, 5}); 0 = off
    mu: float = 0.0  # weight of the proximal (momentum teacher) term; 0 = off, no teacher kept (the paper: 1)
    # fraction of the run the teacher averages over; null: beta schedule
    teacher_memory: Optional[float] = 0.1
    beta: float = 0.99  # with teacher_memory null: teacher momentum for the first beta_switch of training ...
    beta_late: float = 0.999  # ... and after it (the paper's values)
    beta_switch: float = 0.1  # the share of training after which beta_late applies
    steps: int = 1  # K: ascent steps on the perturbation
    step_size: float = 1.0  # eta (>> epsilon: one step reaches the edge of the ball, as in the paper)
    noise_std: float = 1e-3  # sigma of the initial perturbation
    epsilon: float = 1e-3  # radius of the perturbation ball (scale: token: of each token's size)
    norm: str = "inf"  # inf | l2 | l1
    scale: str = "token"  # token | absolute | reference: what the three sizes above are relative to
    # per-task overrides, e.g. {stsb: {lambda_s: 3}}
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)


# the teacher is shared, so these are run-wide
TEACHER_FIELDS = (
    "beta",
    "beta_late",
    "beta_switch",
    "teacher_memory",
)


def _settings_problems(cfg: Config, where: str) -> list[str]:
    problems = []
    for name in ("lambda_s", "mu", "step_size", "noise_std", "epsilon"):
        if getattr(cfg, name) < 0:
            problems.append(f"{where}.{name}: must be >= 0, got {getattr(cfg, name)}")
    if cfg.steps < 1:
        problems.append(f"{where}.steps: must be >= 1, got {cfg.steps}")
    if cfg.norm not in NORMS:
        problems.append(f"{where}.norm: must be one of {', '.join(NORMS)}, got '{cfg.norm}'")
    if cfg.scale not in SCALES:
        problems.append(f"{where}.scale: must be one of {', '.join(SCALES)}, got '{cfg.scale}'")
    if cfg.teacher_memory is not None and not 0 < cfg.teacher_memory <= 1:
        problems.append(
            f"{where}.teacher_memory: must be in (0, 1] (a fraction of the run) or null, "
            f"got {cfg.teacher_memory}"
        )
    for name in TEACHER_FIELDS[:3]:
        if not 0 <= getattr(cfg, name) <= 1:
            problems.append(f"{where}.{name}: must be in [0, 1], got {getattr(cfg, name)}")
    return problems


def task_settings(cfg: Config, task: str, problems: list[str] | None = None) -> Config:
    """The run-wide settings with this task's overrides applied."""
    override = dict(cfg.tasks.get(task, {}))
    sink = problems if problems is not None else []
    bad = [k for k in override if k in TEACHER_FIELDS or k == "tasks"]
    sink += [
        f"regularizer.smart.tasks.{task}.{k}: the teacher is shared by all tasks; set it run-wide"
        for k in bad
    ]
    merged = {
        **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "tasks"},
        **{k: v for k, v in override.items() if k not in bad},
    }
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


# ---------------------------------------------------------------- the perturbation


# ---------------------------------------------------------------- the regularizer


class Smart(Base):
    replays_dropout = True

    def __init__(self, cfg: Config, model: torch.nn.Module, specs: list):
        self.cfg = cfg
        self.settings = {s.name: task_settings(cfg, s.name) for s in specs}
        self.uses_teacher = any(s.mu > 0 for s in self.settings.values())
        self.teacher = _frozen_copy(model) if self.uses_teacher else None
        self.skipped = 0  # micro-batches whose adversarial term was dropped for NaN/inf
        self._warned_bf16 = False
        self.activity = TermActivity("regularizer.smart", "smart_adv")

    # 1-3: the smoothness-inducing adversarial term
    def _adversarial(self, ctx: StepContext, cfg: Config) -> torch.Tensor | None:
        head = ctx.model.head(ctx.task)
        clean = ctx.logits.detach()
        delta, finite = adversarial_perturbation(
            ctx, lambda out: head.divergence(out, clean, ctx.batch).sum(), cfg
        )
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
                self.activity.add(terms["smart_adv"], ctx)
        if cfg.mu > 0:
            terms["smart_prox"] = cfg.mu * self._proximal(ctx)
        return terms

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, step: int, total_steps: int, lr: float) -> None:
        """teacher <- beta * teacher + (1 - beta) * model, every optimizer step."""
        if self.teacher is None:
            return
        beta = teacher_beta(self.cfg, step, total_steps)
        teacher_params = list(self.teacher.parameters())
        torch._foreach_lerp_(teacher_params, list(model.parameters()), 1.0 - beta)
        for mine, theirs in zip(self.teacher.buffers(), model.buffers()):
            mine.copy_(theirs)

    def _warn_bf16_once(self, ctx: StepContext, cfg: Config) -> None:
        if self._warned_bf16 or not torch.is_autocast_enabled(ctx.embeds.device.type) or cfg.lambda_s == 0:
            return
        self._warned_bf16 = True
        resolution = 1e-3 if cfg.scale == "absolute" else 2.0**-8  # bf16 keeps 8 significant bits
        if cfg.epsilon < resolution:
            log.warning(
                "regularizer.smart: epsilon=%g is below bfloat16 resolution of the embeddings; under "
                "trainer.bf16=true the adversarial term mostly measures rounding (use fp32 or a larger "
                "epsilon)",
                cfg.epsilon,
            )

    def state_dict(self) -> dict:
        return {
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.teacher is not None and state.get("teacher") is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.skipped = int(state.get("skipped", 0))

    def stats(self) -> dict[str, float]:
        return {"smart_skipped": float(self.skipped), **self.activity.stats()}


def teacher_beta(cfg: Config, step: int, total_steps: int) -> float:
    """The EMA momentum: 1 - 1/(memory in steps) when teacher_memory is set, else the paper's two values."""
    if cfg.teacher_memory is not None:
        return 1.0 - 1.0 / max(1.0, cfg.teacher_memory * total_steps)
    return cfg.beta if step <= cfg.beta_switch * total_steps else cfg.beta_late


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(model)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def build(cfg: Config, model: torch.nn.Module, specs: list) -> Smart:
    return Smart(cfg, model, specs)
