"""FreeLB (Zhu et al. 2020, "FreeLB: Enhanced Adversarial Training for Natural Language Understanding",
Algorithm 1): K ascent steps on an embedding perturbation, and the weight gradients of all K adversarial
passes accumulated (averaged), so one optimizer step trains on K perturbed copies of the batch "for free".

  delta_0 = U(-1, 1) * init_mag / sqrt(tokens * hidden) per example (l2; 0 = start at zero), padding 0
  for t in 1..K:
      loss_t = L(f(x + delta_{t-1}), y) / K;  backward: weights accumulate grad, delta gets its grad
      delta_t = delta_{t-1} + step_size * g / ||g||_2   (per example), then project onto ||delta||_2 <=
                epsilon (epsilon = 0: no projection, as in the paper's GLUE runs)

The perturbed tensor is the word embeddings (before positions/LayerNorm), as for SMART; every pass reuses
the clean pass's dropout masks (the paper keeps one mask across ascent steps). By default the clean loss is
not trained on (the paper's objective); include_clean_loss adds it. The method does its own K backward
passes, so its logged term (`freelb`, the mean adversarial loss) is for the logs only. Works on every head:
L is the training loss of the batch (the head's own loss, or the distillation loss when distilling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtdnn.regularizers import CountsSkips, StepContext


@dataclass
class Config:
    steps: int = 3  # K (the paper uses 2-3 on GLUE)
    step_size: float = 3e-2  # alpha, the ascent step
    init_mag: float = 3e-2  # of the random start; 0 starts at zero
    epsilon: float = 0.0  # l2 radius per example; 0 = unbounded (the paper's GLUE setting)
    include_clean_loss: bool = False  # also train on the clean loss (not in the paper)


def problems(cfg: Config, specs: list) -> list[str]:
    found = [
        f"regularizer.freelb.{name}: must be >= 0, got {getattr(cfg, name)}"
        for name in ("step_size", "init_mag", "epsilon")
        if getattr(cfg, name) < 0
    ]
    if cfg.steps < 1:
        found.append(f"regularizer.freelb.steps: must be >= 1, got {cfg.steps}")
    return found


def per_example_l2(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))


def initial_delta(embeds: torch.Tensor, mask: torch.Tensor, init_mag: float) -> torch.Tensor:
    """U(-1, 1) on real tokens, scaled so the expected size does not grow with length: init_mag/sqrt(L*H)."""
    if init_mag == 0:
        return torch.zeros_like(embeds)
    weights = mask.unsqueeze(-1).to(embeds.dtype)
    size = (mask.sum(1).to(embeds.dtype) * embeds.shape[-1]).view(-1, 1, 1)
    return (torch.rand_like(embeds) * 2 - 1) * weights * init_mag / size.sqrt()


def ascend(delta: torch.Tensor, grad: torch.Tensor, cfg: Config) -> torch.Tensor:
    """delta + step_size * g / ||g||_2, then (if epsilon > 0) back onto the l2 ball of radius epsilon."""
    delta = delta + cfg.step_size * grad / per_example_l2(grad).clamp_min(1e-30)
    if cfg.epsilon > 0:
        delta = delta * (cfg.epsilon / per_example_l2(delta).clamp_min(cfg.epsilon))
    return delta


class FreeLB(CountsSkips):
    skip_label = "freelb"
    replays_dropout = True

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.task_loss_weight = 1.0 if cfg.include_clean_loss else 0.0
        self.skipped = 0  # ascent passes stopped early for a NaN/inf loss

    def penalty(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        mask = ctx.batch["attention_mask"]
        delta = initial_delta(ctx.embeds.detach(), mask, self.cfg.init_mag)
        losses = []
        for _ in range(self.cfg.steps):
            delta.requires_grad_(True)
            with ctx.dropout.replay():
                logits = ctx.model(ctx.task, **{**ctx.batch, "inputs_embeds": ctx.embeds + delta})
            loss = ctx.loss_of(logits)
            if not torch.isfinite(loss):  # never backward a NaN; what was accumulated so far stays
                self.skipped += 1
                break
            # weights accumulate this pass's gradient; retain_graph: the embedding lookup is shared by the
            # passes
            (loss * ctx.scale / self.cfg.steps).backward(retain_graph=True)
            losses.append(loss.detach())
            grad = delta.grad * mask.unsqueeze(-1).to(delta.dtype)
            delta = ascend(delta.detach(), grad, self.cfg)
        return {"freelb": torch.stack(losses).mean()} if losses else {}


def build(cfg: Config, model: torch.nn.Module, specs: list) -> FreeLB:
    return FreeLB(cfg)
