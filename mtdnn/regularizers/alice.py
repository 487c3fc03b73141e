"""ALICE (Pereira et al. 2020, "Adversarial Training for Commonsense Inference"): two adversarial terms,
both added to the loss.

  label:    delta_y = K ascent steps on the task loss L(f(x + delta), y)
            -> label_weight * L(f(x + delta_y), y)
  virtual:  delta_v = K ascent steps on D(f(x + delta), f(x))
            -> virtual_weight * D(f(x + delta_v), f(x))

D is the head's symmetric divergence (symmetric KL; squared error for regression), the same as SMART's, and
the ascent steps are SMART's (mtdnn/regularizers/smart.py: word embeddings before positions/LayerNorm,
gradient w.r.t. delta only, normalised in the chosen norm, projected onto the epsilon ball, sizes relative
to each token's embedding by default, padding never perturbed, the clean pass's dropout masks replayed).
Both terms work on every head: L is the batch's training loss (the head's own, or the distillation loss
when distilling). A term whose ascent or value is NaN/inf is dropped for that micro-batch and counted
(`alice_skipped`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtdnn.regularizers import CountsSkips, StepContext
from mtdnn.regularizers.perturbation import NORMS, SCALES, adversarial_perturbation, perturbed_logits


@dataclass
class Config:
    label_weight: float = 1.0  # alpha of the label-adversarial term; 0 = off
    virtual_weight: float = 1.0  # alpha of the virtual-adversarial term; 0 = off
    steps: int = 1  # K ascent steps for each perturbation
    step_size: float = 1.0  # eta of each ascent step
    noise_std: float = 1e-3  # sigma of the initial perturbation
    epsilon: float = 1e-3  # radius of the perturbation ball
    norm: str = "inf"  # inf | l2 | l1
    scale: str = "token"  # token | absolute | reference: what the sizes are relative to (see smart.py)


def problems(cfg: Config, specs: list) -> list[str]:
    found = [
        f"regularizer.alice.{name}: must be >= 0, got {getattr(cfg, name)}"
        for name in ("label_weight", "virtual_weight", "step_size", "noise_std", "epsilon")
        if getattr(cfg, name) < 0
    ]
    if cfg.steps < 1:
        found.append(f"regularizer.alice.steps: must be >= 1, got {cfg.steps}")
    if cfg.norm not in NORMS:
        found.append(f"regularizer.alice.norm: must be one of {', '.join(NORMS)}, got '{cfg.norm}'")
    if cfg.scale not in SCALES:
        found.append(f"regularizer.alice.scale: must be one of {', '.join(SCALES)}, got '{cfg.scale}'")
    return found


class Alice(CountsSkips):
    skip_label = "alice"
    replays_dropout = True

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.skipped = 0

    def penalty(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        head = ctx.model.head(ctx.task)
        terms = {}
        if self.cfg.label_weight > 0:
            delta, finite = adversarial_perturbation(ctx, ctx.loss_of, self.cfg)
            terms["alice_label"] = (self.cfg.label_weight * ctx.loss_of(perturbed_logits(ctx, delta)), finite)
        if self.cfg.virtual_weight > 0:
            clean = ctx.logits.detach()
            delta, finite = adversarial_perturbation(
                ctx, lambda out: head.divergence(out, clean, ctx.batch).sum(), self.cfg
            )
            term = head.divergence(perturbed_logits(ctx, delta), ctx.logits, ctx.batch).mean()
            terms["alice_virtual"] = (self.cfg.virtual_weight * term, finite)
        return self._finite(terms)

    def _finite(self, terms: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One host sync for both terms: a NaN must never reach backward."""
        if not terms:
            return {}
        flags = torch.stack([finite & torch.isfinite(value) for value, finite in terms.values()]).tolist()
        self.skipped += flags.count(False)
        return {name: value for (name, (value, _)), ok in zip(terms.items(), flags) if ok}


def build(cfg: Config, model: torch.nn.Module, specs: list) -> Alice:
    return Alice(cfg)
