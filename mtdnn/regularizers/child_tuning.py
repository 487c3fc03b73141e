"""Child-Tuning (Xu et al. 2021, "Raise a Child in Large Language Model"): update only a child network of
the pretrained encoder by masking its gradients before each optimizer step.

  F (task-free):   every step, M ~ Bernoulli(p) per layer weight; grad <- grad * M / p
  D (task-driven): before training, the Fisher information of each layer weight is estimated on the
                   training data (sum over batches of the squared gradient of the task loss); the top p
                   fraction (one threshold over all layers) form a fixed mask; grad <- grad * M

The mask is applied to the gradients after clipping and before the optimizer step (the reference applies it
inside its AdamW, after the Trainer's clipping), so it works with any optimizer. As in the reference, the
child network is chosen among the Transformer layers' parameters; embeddings, pooler and heads train in
full. Weight decay and momentum on masked weights: a masked weight gets a zero gradient, so AdamW still
applies its decoupled weight decay to it and still moves it by its running first moment, exactly as the
reference ChildTuningAdamW does (it masks the gradient before the moment updates). The Fisher pass reads
the tasks' batches in turn (task A's first, task B's first, ...), so a `fisher_batches` limit covers every
task; it runs once per fresh run in eval mode (no dropout, so the training RNG stream is untouched); the
mask is checkpointed, so a resumed run does not recompute it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from mtdnn.model.encoders import encoder_layers
from mtdnn.regularizers import Base

log = logging.getLogger(__name__)
MODES = ("D", "F")


@dataclass
class Config:
    mode: str = "D"  # D: Fisher-selected fixed mask | F: fresh Bernoulli mask each step
    reserve_p: float = 0.3  # p: fraction of layer weights updated (the paper searches 0.1-0.3)
    fisher_batches: int = 0  # D: batches for the Fisher estimate; 0 = one pass over every task's train split


def problems(cfg: Config, specs: list) -> list[str]:
    found = []
    if cfg.mode not in MODES:
        found.append(f"regularizer.child_tuning.mode: must be D or F, got '{cfg.mode}'")
    if not 0 < cfg.reserve_p <= 1:
        found.append(f"regularizer.child_tuning.reserve_p: must be in (0, 1], got {cfg.reserve_p}")
    if cfg.fisher_batches < 0:
        found.append(f"regularizer.child_tuning.fisher_batches: must be >= 0, got {cfg.fisher_batches}")
    return found


def child_candidates(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The Transformer layers' parameters, as in the reference (embeddings, pooler and heads train in
    full)."""
    inside = {id(p) for p in encoder_layers(model.encoder, "regularizer.child_tuning").parameters()}
    return {name: p for name, p in model.named_parameters() if p.requires_grad and id(p) in inside}


def fisher_information(
    model, batches: Iterable[tuple[str, dict]], device: torch.device, limit: int
) -> dict[str, torch.Tensor]:
    """Sum over batches of the squared gradient of the task loss, per candidate weight (the reference's
    estimate)."""
    params = child_candidates(model)
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()
    for count, (task, batch) in enumerate(batches, start=1):
        batch = {k: v.to(device) for k, v in batch.items()}
        model.zero_grad(set_to_none=True)
        model.head(task).loss(model(task, **batch), batch).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.float().pow(2)
        if count == limit:
            break
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return fisher


def top_fraction_mask(scores: dict[str, torch.Tensor], keep: float) -> dict[str, torch.Tensor]:
    """True for the `keep` fraction of largest scores, one threshold over all tensors together."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    count = max(1, round(keep * flat.numel()))
    threshold = flat.topk(count, sorted=False).values.min()  # topk, not quantile: quantile caps input size
    return {name: (s >= threshold) & (s > 0) for name, s in scores.items()}  # unused weights never count


class ChildTuning(Base):
    def __init__(self, cfg: Config, model: torch.nn.Module):
        self.cfg = cfg
        self.params = child_candidates(model)
        if not any(p.ndim >= 2 for p in self.params.values()):  # adapter=... leaves only LayerNorms trainable
            log.warning(
                "regularizer.child_tuning: the Transformer layers' weight matrices are frozen; only "
                "LayerNorm parameters are masked"
            )
        self.mask: dict[str, torch.Tensor] | None = None  # D: fixed after prepare()
        self.kept = 0.0  # fraction of layer weights the D mask keeps (logged)
        self.steps = 0  # F: masks drawn so far
        self.seed = torch.initial_seed()  # F: the run's seed (set before building), without drawing from it

    def prepare(
        self, model: torch.nn.Module, batches: Iterable[tuple[str, dict]], device: torch.device
    ) -> None:
        if self.cfg.mode == "D":
            fisher = fisher_information(model, batches, device, self.cfg.fisher_batches)
            self._set_mask(top_fraction_mask(fisher, self.cfg.reserve_p))
            log.info("child_tuning: Fisher mask keeps %.1f%% of layer weights", 100 * self.kept)

    def _set_mask(self, mask: dict[str, torch.Tensor]) -> None:
        self.mask = {name: m.to(self.params[name].device) for name, m in mask.items()}
        self.kept = sum(int(m.sum()) for m in mask.values()) / max(1, sum(m.numel() for m in mask.values()))

    @torch.no_grad()
    def before_step(self, model: torch.nn.Module) -> None:
        if self.cfg.mode == "F":
            # a generator seeded by (run seed, step): other masks for another seed, the same on every torchrun
            # rank and after a resume
            self.steps += 1
            generator = torch.Generator(next(iter(self.params.values())).device).manual_seed(
                (self.seed * 1_000_003 + self.steps) % 2**63
            )
            for p in self.params.values():
                if p.grad is not None:
                    keep = torch.empty_like(p.grad).bernoulli_(self.cfg.reserve_p, generator=generator)
                    p.grad.mul_(keep).div_(self.cfg.reserve_p)
            return
        if self.mask is None:
            raise RuntimeError("child_tuning: mode D needs prepare() (the Fisher pass) before the first step")
        for name, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.mask[name])

    def state_dict(self) -> dict:
        return {"mask": self.mask, "steps": self.steps, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mask") is not None:
            self._set_mask(state["mask"])
        self.steps = int(state.get("steps", 0))
        self.seed = int(state.get("seed", self.seed))

    def stats(self) -> dict[str, float]:
        return {"child_tuning_kept": self.kept} if self.mask is not None else {}


def build(cfg: Config, model: torch.nn.Module, specs: list) -> ChildTuning:
    return ChildTuning(cfg, model)
